"""aiohttp's low-level server, with requests its parser refuses answered like every other error.

Out of the box aiohttp answers a malformed request (a bad request line, an over-long or invalid
header, a missing Host) with a text/plain page and logs a traceback that quotes the raw bytes,
which can hold an Authorization header or a token in the query. Here such a request gets the
proxy's JSON error and a one-line log naming only the kind of fault.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, BadStatusLine, LineTooLong
from aiohttp.web_protocol import RequestHandler

from proxy.errors import error_response

log = logging.getLogger("sigv4_proxy")

# The request line may be longer than a header field, for long query strings (CloudFront itself
# takes URLs up to 8,192 bytes). The two limits differ so that a LineTooLong says which one it hit.
MAX_REQUEST_LINE = 16 * 1024
MAX_HEADER_FIELD = 8190  # aiohttp's default, for a header's name and its value each
MAX_HEADERS = 128  # aiohttp's default
SUPPORTED_VERSIONS = "the proxy speaks HTTP/1.1 and HTTP/1.0"


# What a parser error says before the bytes it quotes (a blank line, then the quoted bytes):
# llhttp's and aiohttp's own fixed wording ("Duplicate Content-Length"), never the client's bytes.
_FIXED_REASON = re.compile(r"[A-Za-z][A-Za-z0-9 '.,:`()-]{0,120}")
# The few one-line messages aiohttp's C parser raises without quoting anything.
_ONE_LINE_REASONS = frozenset({"Missing 'Host' header in request."})
# A request line llhttp refused for its method alone: token SP target SP HTTP-version.
_REQUEST_LINE_QUOTED = re.compile(r"b'[!#$%&*+.^_`|~0-9A-Za-z-]+ \S+ HTTP/\d\.\d")


class _Handler(RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started: cannot send an error response")
        fault = type(exc).__name__ if exc is not None else "error"
        if status == 500:  # a handler failed; the request itself was logged and counted already
            log.error("internal error in the HTTP server (%s); see the proxy's log above", fault)
            return error_response(500, "internal error", "the proxy failed on this request; see its log", close=True)
        response = self._refusal(request, status, exc, fault)
        on_refusal = self._manager.on_refusal  # type: ignore[union-attr]
        if on_refusal is not None:
            on_refusal(response)
        return response

    def _refusal(self, request: web.BaseRequest, status: int, exc: BaseException | None, fault: str) -> web.Response:
        """The answer to a request the parser refused."""
        refused = _refused_head(exc)
        if refused is not None:
            status, error, detail = refused
            log.warning("refused a request from %s: %s (%s)", request.remote, error, detail)
            return error_response(status, error, detail, close=True)
        # The exception's text quotes the offending bytes: never log them, only the parser's reason.
        reason = parser_reason(exc) or fault
        log.warning("refused a malformed request from %s: %s", request.remote, reason)
        return error_response(status, "malformed request", f"the HTTP request could not be parsed: {reason}", close=True)


def parser_reason(exc: BaseException | None) -> str | None:
    """The parser's own reason, the lines before the quoted bytes ("Bad status line: Invalid HTTP
    version"), or None when the message is not shaped that way (aiohttp's pure-Python parser, the
    raw-UTF-8 fallback, puts the client's bytes in its first line)."""
    message = getattr(exc, "message", None)
    if not isinstance(message, str):
        return None
    if message in _ONE_LINE_REASONS:
        return message
    described, blank, _quoted = message.partition("\n\n")
    if not blank:
        return None
    reason = ": ".join(line.strip().rstrip(":") for line in described.split("\n"))
    return reason if _FIXED_REASON.fullmatch(reason) else None


def _refused_head(exc: BaseException | None) -> tuple[int, str, str] | None:
    """Status, error and detail for a request head refused for something other than its syntax."""
    message = getattr(exc, "message", "")
    if isinstance(exc, BadHttpMethod):
        if message == "Received HTTPS traffic on an HTTP port":
            return 400, "TLS on a plain-HTTP port", "the proxy speaks plain HTTP: use http://, not https://"
        if _REQUEST_LINE_QUOTED.search(str(message)):  # a method llhttp does not know (RFC 9110 15.6.2)
            return 501, "method not implemented", "the proxy forwards the standard HTTP and WebDAV methods only"
        return 400, "malformed request", "the request line is not an HTTP/1.x request line"
    if (isinstance(exc, BadStatusLine) and "Invalid HTTP version" in str(message)) or str(message).startswith(
        "Pause on PRI/Upgrade"  # the HTTP/2 connection preface ("PRI * HTTP/2.0")
    ):
        return 505, "HTTP version not supported", SUPPORTED_VERSIONS  # RFC 9110 15.6.6
    return _too_large(exc)  # RFC 9110 15.5.15, RFC 6585 5: a size, not a syntax error


def _too_large(exc: BaseException | None) -> tuple[int, str, str] | None:
    """Status, error and detail for a request head over one of the parser's limits."""
    if isinstance(exc, LineTooLong):
        if exc.args[1] == MAX_REQUEST_LINE:
            return 414, "URI too long", f"the request line is over {MAX_REQUEST_LINE} bytes"
        return 431, "request header too large", f"a header name or value is over {MAX_HEADER_FIELD} bytes"
    if isinstance(exc, BadHttpMessage) and exc.message == "Too many headers received":
        return 431, "request header too large", f"more than {MAX_HEADERS} header fields"
    return None


# Request bytes are read from a client's socket at most this many at a time. Both event loops read
# up to 256 KiB per read for a plain asyncio.Protocol, and aiohttp holds a read whole before it
# pauses the socket, so each large upload in flight held ~0.5 MiB: ten concurrent 5 MiB POSTs took
# the proxy's peak RSS from ~59 MiB idle to ~65.3 MiB. With 128 KiB reads (and server.py's
# READ_BUFSIZE) ~62.6 MiB. 64 KiB reads gave ~62.3 MiB but ~10% more CPU per POST (each read is a
# wakeup, a hash update and a spill-file write); small GETs take one read either way.
READ_SIZE = 128 * 1024


class _BufferedReads(asyncio.BufferedProtocol):
    """A connection's reads go into the server's one buffer, copied out to its RequestHandler.

    aiohttp's RequestHandler cannot itself be the buffered protocol: uvloop reads into
    get_buffer() only for a protocol that is not an asyncio.Protocol, and it is one. Sharing
    the buffer is safe: each loop calls get_buffer(), reads, and calls buffer_updated() in one
    step, and the bytes are copied before anything else runs.
    """

    __slots__ = ("handler", "_buffer", "_data_received")

    def __init__(self, handler: _Handler, buffer: memoryview):
        self.handler = handler
        self._buffer = buffer
        self._data_received = handler.data_received

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._data_received(self._buffer[:nbytes].tobytes())


class ProxyServer(web.Server):
    """web.Server whose connections answer parser failures with the proxy's JSON errors, and read
    READ_SIZE bytes at most at a time. `on_refusal` sees each such answer (the access log and the
    metrics count requests the parser refused, too)."""

    def __init__(
        self, *args: Any, on_refusal: Callable[[web.StreamResponse], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.on_refusal = on_refusal
        self._read_buffer = memoryview(bytearray(READ_SIZE))

    def __call__(self) -> _BufferedReads:  # type: ignore[override]
        return _BufferedReads(_Handler(self, loop=self._loop, **self._kwargs), self._read_buffer)
