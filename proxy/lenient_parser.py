"""aiohttp's fast C request parser, with a per-connection fallback for raw UTF-8 request targets.

llhttp (the C parser) refuses a request line holding raw non-ASCII bytes with a bare 400, yet
clients that do not percent-encode UTF-8 paths exist (curl passes them as typed; ../shared/cases
P3), and the proxy encodes such targets for them. aiohttp's pure-Python parser accepts them but
costs ~10% more CPU on every request, so it only takes over a connection once the C parser has
refused a target there: the bytes since the end of the last request aiohttp has been handed are
fed to it again.

Those bytes are found by following the stream's framing beside the C parser, because nothing in
aiohttp says where llhttp stopped (the error position stays inside the Cython object), and the
end of a request body is not seen from outside either: a body can end anywhere inside a read,
and llhttp may pause in the middle of one (a full read buffer) and go on in a later call. So the
head of each request aiohttp is handed is cut at its blank line (llhttp is strict: CRLF only, no
bare LF), and its body is counted off, by Content-Length, or through the chunk-size lines
(RFC 9112 7.1), which costs one bytes.find per chunk. Bytes past the last request are kept until
the next one is handed over, so a refused request line is replayed whole, however the client's
writes cut it, and no request is ever replayed twice. Requests llhttp completed in the failing
call itself were never handed over (it raises before returning them) and are replayed too. Where
the stream cannot be followed (CONNECT, an upgrade request with a body, 64 KiB of heads llhttp has
not parsed yet), such a target keeps llhttp's 400 rather than risk replaying the wrong bytes.
"""

from __future__ import annotations

from typing import Any

import aiohttp.web_protocol
from aiohttp import hdrs, http_parser
from aiohttp.http_exceptions import HttpProcessingError, InvalidURLError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

_C_PARSER = aiohttp.web_protocol.HttpRequestParser
_REPLAY_LIMIT = 64 * 1024  # request heads are smaller (aiohttp's own line/field limits are 8 KiB)
_SIZE_LINES, _TRAILER_LINES = 1, 2  # where a chunked body is: at a chunk-size line, in its trailers


class _LostTrack(Exception):
    """The stream no longer matches what llhttp reported: stop following it."""


class LenientRequestParser:
    """Feeds the C parser, following the stream's framing so that a refused request can be replayed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._parser: Any = _C_PARSER(*args, **kwargs)
        self._fallen_back = False
        # Bytes after the last request handed over (while a chunked body is read: the start of a
        # line cut by a read), or None once the stream is not followed (e.g. after a huge head).
        self._pending: bytes | None = b""
        self._left = 0  # body bytes (or a chunk's data and CRLF) before the next line or request
        self._chunked = 0  # 0, _SIZE_LINES or _TRAILER_LINES
        self._body: StreamReader | None = None  # the body of the last request handed over

    def feed_data(self, data: bytes) -> Any:
        if self._fallen_back:
            return self._parser.feed_data(data)
        try:
            result = self._parser.feed_data(data)
        except InvalidURLError:
            replay = self._replay(data)
            if replay is None or replay.isascii():
                raise  # not a UTF-8 target (or not followed): the same 400 as without the fallback
            self._parser = http_parser.HttpRequestParserPy(*self._args, **self._kwargs)
            self._fallen_back = True
            return self._parser.feed_data(replay)
        except HttpProcessingError as exc:
            # Inside a body (a bad chunk size that came in a later read), llhttp's error reaches
            # aiohttp as the next request's, while the handler reading this body waits on forever
            # (--idle-timeout): the body must fail with it.
            if self._body is not None and not self._body.is_eof():
                self._body.set_exception(exc)
                self._body.feed_eof()  # ended: aiohttp must not linger reading it after the answer
            raise
        messages = result[0]
        # Nearly every read is one whole request without a body: its blank line is the read's only
        # one and ends it, so nothing is left over. One find settles it, sparing the general walk.
        if (
            self._pending == b""
            and not self._left
            and not self._chunked
            and len(messages) == 1
            and messages[0][1] is EMPTY_PAYLOAD
            and not messages[0][0].upgrade
            and data.find(b"\r\n\r\n") == len(data) - 4
        ):
            return result
        for _message, payload in messages:
            if payload is not EMPTY_PAYLOAD:
                self._body = payload
        if self._pending is not None:
            try:
                self._pending = self._follow(self._pending + data if self._pending else data, messages)
            except (_LostTrack, LookupError, ValueError):  # e.g. a chunk size llhttp has yet to refuse
                self._pending = None
        return result

    def _follow(self, buffer: bytes, messages: Any) -> bytes | None:
        """What is left of `buffer` once the requests llhttp handed over (and their bodies) are cut."""
        pos = self._skip_body(buffer, 0) if self._left or self._chunked else 0
        for message, payload in messages:
            if self._left or self._chunked or pos == len(buffer):
                raise _LostTrack  # a request handed over whose head is not where it should be
            if buffer[pos] in b"\r\n":  # RFC 9112 2.2: empty lines before a request line are ignored
                pos = len(buffer) - len(buffer[pos:].lstrip(b"\r\n"))
            end = buffer.find(b"\r\n\r\n", pos)
            if end < 0:
                raise _LostTrack
            pos = end + 4
            if payload is not EMPTY_PAYLOAD or message.upgrade:
                if message.upgrade:
                    if payload is not EMPTY_PAYLOAD:
                        raise _LostTrack  # CONNECT, or an upgrade with a body: too rare to follow
                    # aiohttp stops at an upgrade request and hands the rest of the read back to
                    # its server, which feeds it again once it declines the upgrade (or, for an
                    # upgrade it does not know, drops it): either way it does not follow this one.
                    return b""
                if message.chunked:
                    self._chunked = _SIZE_LINES
                else:
                    self._left = int(message.headers[hdrs.CONTENT_LENGTH])
                pos = self._skip_body(buffer, pos)
        return buffer[pos:] if len(buffer) - pos <= _REPLAY_LIMIT else None

    def _skip_body(self, buffer: bytes, pos: int) -> int:
        """Where the body under way ends in `buffer`, or where a line it cut begins; at len(buffer)
        when the whole buffer is body."""
        left, chunked, size = self._left, self._chunked, len(buffer)  # locals: this runs per chunk
        while True:
            if left:
                if left > size - pos:
                    self._left, self._chunked = left - (size - pos), chunked
                    return size
                pos += left
                left = 0
            if not chunked:
                break
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                break
            line, pos = buffer[pos:end], end + 2
            if chunked == _TRAILER_LINES:
                if not line:  # the empty line after the trailer fields ends the message
                    chunked = 0
            elif chunk := int(line.partition(b";")[0], 16):  # chunk-size [ chunk-ext ] CRLF
                left = chunk + 2  # the chunk's data and the CRLF after it
            else:
                chunked = _TRAILER_LINES  # last-chunk
        self._left, self._chunked = left, chunked
        return pos

    def _replay(self, data: bytes) -> bytes | None:
        """The bytes from the start of the request llhttp refused, or None if they are not known."""
        if self._pending is None:
            return None
        buffer = self._pending + data
        try:
            pos = self._skip_body(buffer, 0)
        except ValueError:
            return None
        if self._left or self._chunked:
            return None  # llhttp refused a target inside what we took for a body: out of step
        return buffer[pos:]

    def feed_eof(self) -> Any:
        return self._parser.feed_eof()

    def message_consumed(self) -> None:
        self._parser.message_consumed()

    def set_upgraded(self, val: bool) -> None:
        self._parser.set_upgraded(val)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


def install() -> None:
    """Make aiohttp's server use the lenient parser (process-wide; the HTTP client is unaffected)."""
    aiohttp.web_protocol.HttpRequestParser = LenientRequestParser  # type: ignore[misc]
