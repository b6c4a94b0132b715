"""aiohttp's fast C request parser, with a per-connection fallback for raw UTF-8 request targets.

llhttp (the C parser) refuses a request line holding raw non-ASCII bytes with a bare 400, yet
clients that do not percent-encode UTF-8 paths exist (curl passes them as typed; ../shared/cases
P3), and the proxy encodes such targets for them. aiohttp's pure-Python parser accepts them but
costs ~10% more CPU on every request, so it only takes over a connection once the C parser has
refused a target there: the bytes since the last message boundary are fed to it again.
"""

from __future__ import annotations

from typing import Any

import aiohttp.web_protocol
from aiohttp import http_parser
from aiohttp.http_exceptions import InvalidURLError
from aiohttp.streams import EMPTY_PAYLOAD

_C_PARSER = aiohttp.web_protocol.HttpRequestParser
_REPLAY_LIMIT = 64 * 1024  # request heads are smaller (aiohttp's own line/field limits are 8 KiB)


class LenientRequestParser:
    """Feeds the C parser, keeping the bytes of the request being parsed so they can be replayed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._parser: Any = _C_PARSER(*args, **kwargs)
        self._fallen_back = False
        # Bytes since the last message boundary, or None while a request body is being read (the
        # boundary after it is not known until the body ends).
        self._pending: bytes | None = b""
        self._body: Any = None

    def feed_data(self, data: bytes) -> Any:
        if self._fallen_back:
            return self._parser.feed_data(data)
        if self._pending is None and self._body is not None and self._body.is_eof():
            self._pending, self._body = b"", None  # a body ended: the next request starts here
        try:
            messages, upgraded, tail = self._parser.feed_data(data)
        except InvalidURLError:
            if self._pending is None or (self._pending + data).isascii():
                raise
            self._parser = http_parser.HttpRequestParserPy(*self._args, **self._kwargs)
            self._fallen_back = True
            return self._parser.feed_data(self._pending + data)
        if self._pending is not None:
            self._track(self._pending + data, messages)
        elif messages:
            self._track(None, messages)
        return messages, upgraded, tail

    def _track(self, buffered: bytes | None, messages: list[Any]) -> None:
        if messages:
            payload = messages[-1][1]
            if payload is EMPTY_PAYLOAD and buffered is not None:
                self._pending = buffered.rpartition(b"\r\n\r\n")[2]
            else:
                self._pending, self._body = None, payload
        else:
            self._pending = buffered if buffered is not None and len(buffered) <= _REPLAY_LIMIT else None

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
