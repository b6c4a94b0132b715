"""The one place where failures become responses: JSON with a one-line reason, never a traceback."""

from __future__ import annotations

import json

from aiohttp import web


class ProxyError(Exception):
    """A failure the client should hear about, with the HTTP status that says what kind it is."""

    def __init__(self, status: int, error: str, detail: str, *, close: bool = False) -> None:
        super().__init__(f"{error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.close = close  # the request body was not read: the connection cannot be reused


def error_response(status: int, error: str, detail: str, *, close: bool = False) -> web.Response:
    body = json.dumps({"error": error, "detail": detail}).encode() + b"\n"
    response = web.Response(
        status=status, body=body, headers={"Content-Type": "application/json", "Cache-Control": "no-store"}
    )
    if close:
        response.force_close()  # unread body bytes would be taken for the next request
    return response


def from_exception(exc: ProxyError) -> web.Response:
    return error_response(exc.status, exc.error, exc.detail, close=exc.close)
