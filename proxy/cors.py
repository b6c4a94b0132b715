"""CORS for configured front-end origins, answered by the proxy itself (Fetch standard, section 3.2).

A front-end on another local port (http://localhost:3000) may call the proxy with fetch() only if
its origin is listed in `cors_origins`. The proxy answers preflights itself: an OPTIONS preflight
is a question about the proxy's policy, so it is never signed nor forwarded. On every response the
proxy's CORS headers replace whatever the upstream sent, so a browser sees exactly one of each.
Refusing unlisted origins is guard.py's job; this module only says yes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.errors import ProxyError
from proxy.headers import HTTP_TOKEN

if TYPE_CHECKING:
    from proxy.config import Settings

# RFC 9110 section 5.6.2: method and header names are tokens; anything else is not echoed back.
# Vary tokens a preflight answer depends on (Fetch standard, "CORS protocol and HTTP caches").
_PREFLIGHT_VARY = ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers")


def normalize_origin(value: str) -> str:
    """An origin as browsers serialize it (RFC 6454 section 6.2): lower-case, no default port, no path.

    `*` and `null` are refused: either would let any web page the user visits sign with their AWS
    identity (`null` is the Origin of sandboxed iframes and file: pages, which anyone can make).
    """
    text = value.strip().rstrip("/")
    if text in ("*", "null"):
        raise ValueError(f"{text!r} would let any web page use your AWS identity; list each front-end origin")
    url = URL(text)
    if url.scheme not in ("http", "https") or not url.host or url.raw_path not in ("", "/") or url.query_string:
        raise ValueError(f"{value!r} is not an origin like http://localhost:3000 (scheme://host[:port], no path)")
    host = f"[{url.host}]" if ":" in url.host else url.host.lower()
    port = "" if url.is_default_port() else f":{url.port}"
    return f"{url.scheme}://{host}{port}"


def append_vary(headers: CIMultiDict[str], *names: str) -> None:
    """Add names to Vary once each, as one header, keeping what the upstream listed (RFC 9110 12.5.5)."""
    tokens = [t.strip() for value in headers.getall("Vary", ()) for t in value.split(",") if t.strip()]
    if "*" in tokens:
        return  # already varies on everything
    present = {t.lower() for t in tokens}
    tokens += [n for n in names if n.lower() not in present]
    headers.popall("Vary", None)
    headers["Vary"] = ", ".join(tokens)


class Cors:
    """Addon: preflights for allowed origins, and the proxy's own Access-Control-* on every response."""

    def __init__(self, settings: Settings) -> None:
        self.origins = frozenset(settings.cors_origins)
        # The 403 diagnosis header is for the front-end's developer: let their code read it.
        self._expose = ", ".join([*settings.cors_expose_headers, "X-Sigv4-Proxy-Diagnosis"])
        self._credentials = settings.cors_allow_credentials
        self._max_age = str(settings.cors_max_age)

    def allowed(self, origin: str | None) -> bool:
        return origin is not None and origin.lower() in self.origins

    async def on_request(self, request: web.BaseRequest) -> web.StreamResponse | None:
        origin = request.headers.get("Origin")
        wanted = request.headers.get("Access-Control-Request-Method")
        if request.method != "OPTIONS" or wanted is None or not self.allowed(origin):
            return None  # not a preflight we answer: forwarded (or refused by the guard)
        return self.preflight(request, origin or "", wanted)

    def preflight(self, request: web.BaseRequest, origin: str, method: str) -> web.Response:
        names = [n.strip() for n in request.headers.get("Access-Control-Request-Headers", "").split(",") if n.strip()]
        if not HTTP_TOKEN.fullmatch(method) or not all(HTTP_TOKEN.fullmatch(n) for n in names):
            raise ProxyError(400, "malformed preflight", "Access-Control-Request-Method/-Headers must be HTTP tokens")
        headers: CIMultiDict[str] = CIMultiDict()
        headers["Access-Control-Allow-Origin"] = origin
        # The front-end is trusted once listed: allow what it asks for, so adding a header or a
        # method in the front-end never needs a proxy restart.
        headers["Access-Control-Allow-Methods"] = method
        if names:
            headers["Access-Control-Allow-Headers"] = ", ".join(n.lower() for n in names)
        headers["Access-Control-Max-Age"] = self._max_age
        if self._credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        if request.headers.get("Access-Control-Request-Private-Network", "").lower() == "true":
            # Chrome's Private Network Access: an https front-end calling the proxy on loopback.
            headers["Access-Control-Allow-Private-Network"] = "true"
        append_vary(headers, *_PREFLIGHT_VARY)
        return web.Response(status=204, headers=headers)

    def on_response(self, request: web.BaseRequest, headers: CIMultiDict[str]) -> None:
        # The proxy owns CORS: an upstream's own Access-Control-* (say `*`) must never widen what
        # the configuration allows, nor appear twice next to ours.
        if "access-control-" in " ".join(headers.keys()).lower():  # rare: one pass in C first
            for name in {n for n in headers if n.lower().startswith("access-control-")}:
                headers.popall(name, None)
        origin = request.headers.get("Origin")
        if self.allowed(origin):
            headers["Access-Control-Allow-Origin"] = origin or ""
            if self._expose:
                headers["Access-Control-Expose-Headers"] = self._expose
            if self._credentials:
                headers["Access-Control-Allow-Credentials"] = "true"
        if self.origins:
            # The answer depends on Origin: a shared cache must not hand one origin's answer to another.
            append_vary(headers, "Origin")
