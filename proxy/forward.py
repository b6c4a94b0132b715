"""The request's journey, top to bottom: route, rewrite, read body, sign, send, stream back.

Modelled on Go's httputil.ReverseProxy: one handler of sequential steps, each a call named for
what it does, and one place (errors.py) that turns failures into responses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy import canonical
from proxy.body import EMPTY, Body, read_body
from proxy.config import Route, Settings
from proxy.credentials import CredentialsUnavailable, CredentialSource
from proxy.diagnose import DIAGNOSIS_HEADER
from proxy.errors import ProxyError, from_exception
from proxy.headers import client_response_headers, upstream_request_headers
from proxy.http_server import parser_reason
from proxy.observe import Exchange, Observer, ProxyMetrics, explain_refusal, log_signing, read_refusal
from proxy.rejection import token_rejection
from proxy.signing import Credentials, SignedRequest, amz_date_now, sign
from proxy.upstream import (
    ConnectFailed, ConnectTimeout, Origin, OutboundProxyRefused, TLSFailed, UpstreamClient, UpstreamError,
    UpstreamResponse,
)

log = logging.getLogger("sigv4_proxy")

# Query-string auth (presigned URLs): the proxy's header signature replaces it.
PRESIGN_PARAMS = frozenset(
    {"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
     "X-Amz-Signature", "X-Amz-Security-Token"}
)
# Upstream bodies up to this size (with a Content-Length) are read whole and sent in one write.
SMALL_BODY = 64 * 1024
# Services that want the payload hash as a header too (S3 requires it; aoss documents it).
PAYLOAD_HEADER_SERVICES = frozenset({"s3", "aoss"})


class Addon(Protocol):
    """An optional behaviour plugged into the request's life (guards, CORS, status endpoints).

    It defines the hooks it needs, as mitmproxy's addons do, and leaves out the others:

    - `async def on_request(request) -> web.StreamResponse | None` runs before routing and may
      answer the request itself (it is then neither signed nor forwarded);
    - `def on_response(request, headers: CIMultiDict[str]) -> None` may adjust the headers of every
      response, errors included.

    A hook left out costs nothing per request (a call that does nothing cost ~0.3 us each).
    """


RequestHook = Callable[[web.BaseRequest], Awaitable[web.StreamResponse | None]]
ResponseHook = Callable[[web.BaseRequest, CIMultiDict[str]], None]


@dataclass(frozen=True, slots=True)
class ActiveRoute:
    route: Route
    credentials: CredentialSource
    origin: Origin


@dataclass(slots=True)
class Target:
    """The request target as it goes upstream: exactly what is signed."""

    path: str
    params: list[canonical.QueryParam]

    @property
    def query(self) -> str:
        return canonical.query_string(self.params)


class Forwarder:
    def __init__(
        self,
        routes: list[ActiveRoute],
        client: UpstreamClient,
        settings: Settings,
        addons: Sequence[Addon] = (),
        metrics: ProxyMetrics | None = None,
    ):
        self._request_hooks: tuple[RequestHook, ...] = tuple(
            hook for addon in addons if (hook := getattr(addon, "on_request", None)) is not None
        )
        self._response_hooks: tuple[ResponseHook, ...] = tuple(
            hook for addon in addons if (hook := getattr(addon, "on_response", None)) is not None
        )
        self._observer = Observer(metrics or ProxyMetrics())
        self._routes = sorted(routes, key=lambda r: len(r.route.prefix), reverse=True)
        self._client = client
        self._settings = settings
        self._plus_is_space = settings.query_plus == "space"
        # Built inside the running loop (start_proxy); kept, as each get_running_loop() is a getpid().
        self._loop = asyncio.get_running_loop()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        exchange = Exchange(request.method, _loggable(request))
        response: web.StreamResponse | None = None
        try:
            for on_request in self._request_hooks:
                response = await on_request(request)
                if response is not None:
                    return response
            response = await self._forward(request, exchange)
        except ProxyError as exc:
            log.warning("%s %s -> %d %s: %s", request.method, exchange.path, exc.status, exc.error, exc.detail)
            exchange.failed(exc)
            response = from_exception(exc)
            self.apply_response_addons(request, response.headers)
        except Exception:
            exchange.status = 500  # a bug: server.py's _never_crash answers 500
            raise
        finally:
            # Logged and counted once the response is on its way: aiohttp writes a small one right
            # after this returns, and the access line no longer delays it (~30 us at 1 connection).
            self._loop.call_soon(self._observer.finished, exchange, response)
        return response

    def count_refusal(self, response: web.StreamResponse) -> None:
        """A request the HTTP parser refused (http_server.py) is logged and counted like the rest;
        its method and path are unknown (they may be what could not be parsed)."""
        self._loop.call_soon(self._observer.finished, Exchange("-", "-"), response)

    async def _forward(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        raw_path, raw_query = split_target(request.raw_path)
        path = canonical.wire_path(raw_path)
        active = self.match_route(path)
        route = active.route
        exchange.route = route.prefix
        target = self.rewrite_target(route, raw_path, path, raw_query)
        # No body (most GETs): not even the coroutines of reading one.
        body = await self.read_request_body(request) if request.body_exists else EMPTY
        exchange.bytes_in = body.size
        try:
            upstream, signed, head = await self.sign_and_send(active, request, target, body, exchange)
        finally:
            body.close()
        exchange.stage = "streaming"
        if upstream.status == 403:  # say why AWS said no (diagnose.py); status and body pass unchanged
            explain_refusal(exchange, upstream, head, signed, route, self._settings.debug_signing)
        return await self.stream_response(request, upstream, exchange, head)

    def match_route(self, path: str) -> ActiveRoute:
        for active in self._routes:
            prefix = active.route.prefix
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return active
        raise ProxyError(404, "no route", f"no configured route matches {path}")

    def rewrite_target(self, route: Route, raw_path: str, path: str, raw_query: str) -> Target:
        if route.is_s3:
            path = canonical.wire_path(raw_path, normalize=False)  # S3 keys keep "//" and "."
        if route.strip_prefix and route.prefix != "/":
            path = path[len(route.prefix) :] or "/"
        params = canonical.wire_query(raw_query, self._plus_is_space)
        if "X-Amz-" in raw_query:
            # A presigned URL's own auth parameters: AWS refuses a request signed both ways.
            params = [p for p in params if p[0] not in PRESIGN_PARAMS]
        return Target(route.upstream_path + path, params)

    async def read_request_body(self, request: web.BaseRequest) -> Body:
        try:
            return await read_body(request, self._settings.max_body_size, self._settings.idle_timeout or None)
        except (aiohttp.web.HTTPException, aiohttp.http_exceptions.HttpProcessingError) as exc:
            # The parser's reason, never its message whole: that quotes the bytes it refused.
            reason = parser_reason(exc) or type(exc).__name__
            raise ProxyError(400, "malformed request body", f"the body could not be parsed: {reason}", close=True) from None
        except ConnectionResetError as exc:
            raise ProxyError(400, "request body incomplete", str(exc), close=True) from None

    async def sign_and_send(
        self, active: ActiveRoute, request: web.BaseRequest, target: Target, body: Body, exchange: Exchange
    ) -> tuple[UpstreamResponse, SignedRequest, bytes]:
        """Sign and send; after an upstream "token expired/invalid" 403, once more with refreshed
        credentials (every body is spooled by body.py, so it can be sent again). Returns the
        response, what was signed, and the head of a 403's body, read already to tell why."""
        route = active.route
        for attempt in (1, 2):
            exchange.stage = "signing"
            credentials = await self.current_credentials(active)
            headers, signed = self.sign_request(route, request, target, body, credentials)
            if self._settings.debug_signing:
                log_signing(exchange, route, signed)
            exchange.stage = "sending"
            sent = time.monotonic()
            upstream = await self.send(active, request.method, target, headers, body)
            exchange.upstream_ttfb = time.monotonic() - sent
            if upstream.status != 403:
                return upstream, signed, b""
            head = await self.read_refusal(route, upstream)
            rejected = token_rejection(upstream.headers, head)
            if rejected is None or attempt == 2:
                return upstream, signed, head
            if not await active.credentials.force_refresh(credentials):
                log.warning("%s %s: upstream says %s and refreshing gave no new credentials",
                            request.method, exchange.path, rejected)
                return upstream, signed, head
            log.warning("%s %s: upstream says %s; credentials refreshed, retrying once",
                        request.method, exchange.path, rejected)
            upstream.close()
        raise AssertionError("unreachable: the second attempt always returns")

    async def read_refusal(self, route: Route, upstream: UpstreamResponse) -> bytes:
        try:
            return await read_refusal(upstream)
        except UpstreamError as exc:
            upstream.close()
            raise ProxyError(502, "upstream failed", f"{route.upstream_origin}: reading its 403: {_summary(exc)}") from None

    async def current_credentials(self, active: ActiveRoute) -> Credentials:
        try:
            return await active.credentials.get()
        except CredentialsUnavailable as exc:
            raise ProxyError(503, "credentials unavailable", str(exc)) from None

    def sign_request(
        self, route: Route, request: web.BaseRequest, target: Target, body: Body, credentials: Credentials
    ) -> tuple[CIMultiDict[str], SignedRequest]:
        headers = upstream_request_headers(request.headers, route.signed_headers)
        to_sign = [("host", route.sign_host)]
        if route.signed_headers:
            to_sign += [(n.lower(), v) for n, v in headers.items() if n.lower() in route.signed_headers]
        signed = sign(
            method=request.method,
            uri=canonical.canonical_uri(route.origin_path + target.path, double_encode=not route.is_s3),
            query=canonical.canonical_query(target.params),
            headers=to_sign,
            payload_hash=body.sha256,
            credentials=credentials,
            region=route.region,
            service=route.service,
            timestamp=amz_date_now(),
            payload_header=route.service in PAYLOAD_HEADER_SERVICES,
        )
        headers.extend(signed.headers)
        return headers, signed

    async def send(
        self, active: ActiveRoute, method: str, target: Target, headers: CIMultiDict[str], body: Body
    ) -> UpstreamResponse:
        origin = active.route.upstream_origin
        query = target.query
        try:
            return await self._client.request(
                active.origin,
                method,
                f"{target.path}?{query}" if query else target.path,
                headers,
                body.payload(),
                body.size,
                self._settings.timeout,
            )
        except TimeoutError:
            raise ProxyError(
                504, "upstream timeout", f"{origin} sent no response headers within {self._settings.timeout:g}s (--timeout)"
            ) from None
        except ConnectTimeout as exc:
            raise ProxyError(504, "upstream timeout", f"cannot connect to {origin}: {exc} (--connect-timeout)") from None
        except TLSFailed as exc:
            raise ProxyError(502, "upstream TLS error", f"{origin}: {exc}") from None
        except OutboundProxyRefused as exc:
            raise ProxyError(502, "outbound proxy refused", f"{origin} was not reached: {exc}") from None
        except ConnectFailed as exc:
            raise ProxyError(502, "upstream unreachable", f"cannot connect to {origin}: {exc}") from None
        except UpstreamError as exc:
            raise ProxyError(502, "upstream failed", f"{origin}: {_summary(exc)}") from None

    def apply_response_addons(self, request: web.BaseRequest, headers: CIMultiDict[str]) -> None:
        for on_response in self._response_hooks:
            on_response(request, headers)

    async def stream_response(
        self, request: web.BaseRequest, upstream: UpstreamResponse, exchange: Exchange, head: bytes = b""
    ) -> web.StreamResponse:
        """Stream the upstream's response; `head` is body already read (a 403 being diagnosed)."""
        headers = client_response_headers(upstream.headers)
        if exchange.diagnosis is not None:
            headers[DIAGNOSIS_HEADER] = exchange.diagnosis.header_value()
        self.apply_response_addons(request, headers)
        length = upstream.content_length
        if length is not None and length <= SMALL_BODY and request.method != "HEAD":
            return await self.relay_small(request, upstream, headers, head)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        exchange.streamed = True
        idle = self._settings.idle_timeout or None
        try:
            await response.prepare(request)
            if head:
                await response.write(head)
                exchange.bytes_out += len(head)
            transport = request.transport
            while chunk := await upstream.read_chunk(idle):
                await response.write(chunk)
                exchange.bytes_out += len(chunk)
                if transport is not None and not transport.get_write_buffer_size():
                    upstream.recycle()  # the views written so far are sent: their buffers may be reused
            await response.write_eof()
        except (UpstreamError, TimeoutError) as exc:
            # Headers are gone already: all that is left is to end the connection without a clean
            # end-of-body, so the client sees a truncated response instead of a complete one.
            exchange.upstream_error = "upstream body broke off"
            log.warning("upstream body of %s %s broke off: %s", request.method, exchange.path, _why_body_broke(exc))
            if request.transport is not None:
                request.transport.close()
        finally:
            upstream.close()  # an unfinished response closes its connection; a finished one is pooled
        return response

    async def relay_small(
        self, request: web.BaseRequest, upstream: UpstreamResponse, headers: CIMultiDict[str], head: bytes
    ) -> web.Response:
        """A small body with a known length goes back in one write, headers included: most API
        answers are a few hundred bytes, and one write instead of three is most of their cost."""
        try:
            body = head + await upstream.read(self._settings.idle_timeout or None)
        except (UpstreamError, TimeoutError) as exc:
            upstream.close()
            raise ProxyError(502, "upstream failed", f"its response body broke off: {_why_body_broke(exc)}") from None
        return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)


def _why_body_broke(exc: BaseException) -> str:
    return "no data within --idle-timeout" if isinstance(exc, TimeoutError) else _summary(exc)


def _summary(exc: BaseException) -> str:
    """An HTTP client error in one short line (aiohttp's parser errors span lines and can quote
    kilobytes of the upstream's raw answer)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:160] + "…"


def split_target(raw_target: str) -> tuple[str, str]:
    """Path and query of an origin-form target; anything else never picks our upstream."""
    if raw_target == "*":  # asterisk-form: OPTIONS about the server itself (RFC 9112 3.2.4)
        raise ProxyError(
            400, "asterisk-form target refused", "OPTIONS * asks about this proxy, not an API: send OPTIONS /path", close=True
        )
    if not raw_target.startswith("/"):
        raise ProxyError(
            400,
            "absolute-form target refused",
            "this is a reverse proxy for its configured upstreams only; send origin-form targets (GET /path)",
            close=True,
        )
    target = raw_target.partition("#")[0]
    path, _, query = target.partition("?")
    return path, query


def _loggable(request: web.BaseRequest) -> str:
    """The path without the query: query values may carry tokens or signatures; nor the user-info
    of an absolute-form or authority-form target (`http://user:pass@host/`, CONNECT's
    `user:pass@host:443`), refused but logged."""
    path = request.raw_path.partition("?")[0]
    if not path.startswith("/"):
        scheme, sep, rest = path.partition("://") if "://" in path else ("", "", path)
        authority, slash, tail = rest.partition("/")
        if "@" in authority:
            path = f"{scheme}{sep}<redacted>@{authority.rpartition('@')[2]}{slash}{tail}"
    return path if len(path) <= 200 else path[:200] + "…"
