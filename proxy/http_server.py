"""aiohttp's low-level server, with requests its parser refuses answered like every other error.

Out of the box aiohttp answers a malformed request (a bad request line, an over-long or invalid
header, a missing Host) with a text/plain page and logs a traceback that quotes the raw bytes,
which can hold an Authorization header or a token in the query. Here such a request gets the
proxy's JSON error and a one-line log naming only the kind of fault.
"""

from __future__ import annotations

import logging
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.web_protocol import RequestHandler

from proxy.errors import error_response

log = logging.getLogger("sigv4_proxy")


class _Handler(RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        fault = type(exc).__name__ if exc is not None else "error"
        if request.writer.output_size > 0:
            raise ConnectionError("response already started: cannot send an error response")
        if status == 500:
            log.error("internal error in the HTTP server (%s); see the proxy's log above", fault)
            return error_response(500, "internal error", "the proxy failed on this request; see its log", close=True)
        if isinstance(exc, BadHttpMethod):  # a method llhttp does not know (RFC 9110 15.6.2)
            log.warning("refused a request from %s: unknown method", request.remote)
            return error_response(
                501, "method not implemented", "the proxy forwards the standard HTTP and WebDAV methods only", close=True
            )
        # The exception's text quotes the offending bytes: never log it, name the fault only.
        log.warning("refused a malformed request from %s: %s", request.remote, fault)
        return error_response(
            status, "malformed request", f"the HTTP request could not be parsed ({fault})", close=True
        )


class ProxyServer(web.Server):
    """web.Server whose connections answer parser failures with the proxy's JSON errors."""

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)
