"""The one place where failures become responses: JSON with a one-line reason, never a traceback."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web


class ProxyError(Exception):
    """A failure the client should hear about, with the HTTP status that says what kind it is."""

    def __init__(
        self, status: int, error: str, detail: str, *, close: bool = False, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.close = close  # the request body was not read: the connection cannot be reused
        self.headers = dict(headers or {})  # what the status requires, e.g. Allow on a 405


def error_response(
    status: int, error: str, detail: str, *, close: bool = False, extra: Mapping[str, str] | None = None
) -> web.Response:
    body = json.dumps({"error": error, "detail": detail}).encode() + b"\n"
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store", **(extra or {})}
    response = web.Response(status=status, body=body, headers=headers)
    if close:
        # Really end the connection (aiohttp would otherwise keep it despite a Connection header):
        # the request's unread body must not be parsed as the next request.
        response.force_close()
    return response


def from_exception(exc: ProxyError) -> web.Response:
    return error_response(exc.status, exc.error, exc.detail, close=exc.close, extra=exc.headers)
