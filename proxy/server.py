"""Start-up and shutdown: one shared upstream client, the low-level aiohttp server, uvloop, signals."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

from aiohttp import web

from proxy.config import Route, Settings, parse_listen
from proxy.credentials import ChainCredentialSource, CredentialSource
from proxy.errors import error_response
from proxy.forward import ActiveRoute, Addon, Forwarder
from proxy.guard import check_exposure, safety_addons
from proxy import lenient_parser
from proxy.http_server import MAX_HEADER_FIELD, MAX_HEADERS, MAX_REQUEST_LINE, ProxyServer
from proxy.logs import flush_access_log, flush_access_log_periodically
from proxy.observe import ProxyMetrics
from proxy.outbound_proxy import OutboundProxies, ProxySettingError
from proxy.status import StatusEndpoints
from proxy.upstream import Origin, UpstreamClient

log = logging.getLogger("sigv4_proxy")

lenient_parser.install()  # raw UTF-8 request targets (../shared/cases P3) are encoded, not refused

# A client connection with no request under way is closed after this many seconds: one that never
# sends a request, stops inside its request head, or idles between requests (nginx's default
# keep-alive timeout; aiohttp's own is an hour, so a local program could hold sockets forever).
CLIENT_IDLE_TIMEOUT = 75.0
# aiohttp pauses a connection's socket once it holds more than twice this much unread request body.
# With http_server.READ_SIZE it bounds what each upload in flight holds: 64 KiB (128 KiB) plus one
# 128 KiB read gave ~62.6 (~64.0) MiB peak RSS for ten concurrent 5 MiB POSTs, at the same CPU.
READ_BUFSIZE = 32 * 1024
# docker stop / Kubernetes send SIGTERM, Ctrl-C sends SIGINT: both start a graceful shutdown.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StartupError(RuntimeError):
    """Start-up cannot go on: one line for the user, exit non-zero."""


def upstream_tls(settings: Settings) -> ssl.SSLContext:
    if settings.insecure:  # nothing is verified, so no CA bundle is loaded (or can fail to load)
        log.warning("--insecure: upstream TLS certificates are NOT verified")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile = settings.ca_bundle or os.environ.get("AWS_CA_BUNDLE") or None
    try:
        return ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot load CA bundle {cafile}: {exc}") from None


def outbound_proxies() -> OutboundProxies:
    """HTTPS_PROXY, HTTP_PROXY and NO_PROXY, as Go's ProxyFromEnvironment reads them."""
    try:
        return OutboundProxies.from_environ(os.environ)
    except ProxySettingError as exc:
        raise StartupError(str(exc)) from None


def upstream_client(settings: Settings) -> UpstreamClient:
    """One client with keep-alive pools for every request."""
    return UpstreamClient(upstream_tls(settings), settings.connect_timeout, outbound_proxies())


@dataclass
class RunningProxy:
    """A started proxy; `close()` stops accepting, lets in-flight requests finish, then closes."""

    server: asyncio.AbstractServer
    handler: web.Server
    client: UpstreamClient
    routes: list[ActiveRoute]
    host: str
    port: int
    reserved_prefix: str = "/__sigv4proxy/"

    async def close(self, grace: float = 10.0) -> None:
        """Refuse new connections, give in-flight requests `grace` seconds, then cut what is left.

        The library calls alone get this wrong. aiohttp's `Server.shutdown(t)` leaves idle
        keep-alive connections waiting for a next request until t runs out, waits t for a busy
        handler and then t again after cancelling its request, and takes t=0 to mean no limit.
        `asyncio.Server.wait_closed()` (CPython >= 3.12.1 without uvloop) waits for every
        connection to end, so it must not come before the connections are closed.
        """
        self.server.close()  # the listening socket closes now: connecting gets ECONNREFUSED
        await asyncio.sleep(0)  # requests already read off accepted sockets reach their handlers
        self.handler.pre_shutdown()  # idle keep-alive connections close now, busy ones after their response
        if grace > 0:
            try:
                async with asyncio.timeout(grace):
                    await self.handler.shutdown(grace)
            except TimeoutError:
                log.warning("shutdown: requests still running after %gs (--shutdown-grace): cutting them", grace)
        for connection in self.handler.connections:
            connection.force_close()  # its handler is cancelled (handler_cancellation), upstream closed
        await self.client.close()
        await asyncio.gather(*(a.credentials.close() for a in self.routes))


CredentialFactory = Callable[[Route], CredentialSource]


async def start_proxy(
    settings: Settings,
    routes: list[Route],
    credentials_for: CredentialFactory = ChainCredentialSource,
    addons: Sequence[Addon] = (),
) -> RunningProxy:
    """Start serving; the safety addons (guard.py, cors.py) always run first, before `addons`."""
    check_exposure(settings)
    addons = [*safety_addons(settings), *addons]
    active = [ActiveRoute(route, credentials_for(route), Origin.parse(route.upstream_origin)) for route in routes]
    async with AsyncExitStack() as stack:
        for a in active:  # stop every route's credential refresher if start-up fails past here
            stack.push_async_callback(a.credentials.close)
        # Before the credentials: a bad CA bundle or proxy variable is reported without waiting
        # for SSO or STS. Each route's outbound proxy is decided now, once.
        client = upstream_client(settings)
        stack.push_async_callback(client.close)
        for a in active:
            client.outbound_proxy(a.origin)
        await asyncio.gather(*(a.credentials.start() for a in active))
        metrics = ProxyMetrics()
        # The status endpoints come after the caller's addons, so guards also cover them.
        status = StatusEndpoints(settings.reserved_prefix, active, metrics)
        forwarder = Forwarder(active, client, settings, (*addons, status), metrics)
        handler = ProxyServer(
            _never_crash(forwarder.handle),
            handler_cancellation=True,  # a client that hangs up cancels its upstream request
            access_log=None,
            read_bufsize=READ_BUFSIZE,
            max_line_size=MAX_REQUEST_LINE,
            max_field_size=MAX_HEADER_FIELD,
            max_headers=MAX_HEADERS,
            keepalive_timeout=CLIENT_IDLE_TIMEOUT,
            on_refusal=forwarder.count_refusal,
        )
        host, port = parse_listen(settings.listen)
        try:
            server = await asyncio.get_running_loop().create_server(handler, host, port, backlog=1024)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"cannot listen on {settings.listen}: the port is taken (use --listen)") from None
            raise StartupError(f"cannot listen on {settings.listen}: {exc.strerror or exc}") from None
        stack.pop_all()
    port = server.sockets[0].getsockname()[1]
    return RunningProxy(server, handler, client, active, host, port, settings.reserved_prefix)


def _never_crash(
    handle: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """A bug must cost one request a 500 with a JSON body, never the client a traceback."""

    async def guarded(request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await handle(request)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("internal error on %s %s", request.method, request.raw_path.partition("?")[0])
            return error_response(500, "internal error", "the proxy failed on this request; see its log")

    return guarded


def describe_routes(proxy: RunningProxy) -> list[str]:
    """One start-up line per route: where it listens, where it sends, how it signs (no secrets)."""
    base = f"http://{f'[{proxy.host}]' if ':' in proxy.host else proxy.host}:{proxy.port}"
    lines = []
    for active in proxy.routes:
        r = active.route
        via = proxy.client.outbound_proxy(active.origin)  # host:port, never its credentials
        lines.append(
            f"{base}{r.prefix} -> {r.upstream}{f' via outbound proxy {via}' if via else ''} "
            f"(signing host {r.sign_host}, region {r.region}, service {r.service}, "
            f"credentials: {active.credentials.describe()})"
        )
    status = f"{base}{proxy.reserved_prefix}"
    lines.append(f"proxy's own endpoints (never forwarded): {status}health {status}metrics")
    return lines


async def serve_until_signalled(proxy: RunningProxy, grace: float = 10.0) -> None:
    """Log where the proxy listens, run until SIGINT/SIGTERM, then shut down gracefully; a
    second signal exits at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    # Announce only now: from the first "listening" line on, a stop signal drains gracefully
    # (logged any earlier, a SIGTERM sent on seeing it could still meet the default action).
    for line in describe_routes(proxy):
        log.info("%s", line)
    flusher = asyncio.create_task(flush_access_log_periodically())
    await stop.wait()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, _exit_now, sig)
    log.info("shutting down: refusing new connections, in-flight requests may finish within %gs", grace)
    await proxy.close(grace)
    flusher.cancel()
    flush_access_log()
    log.info("stopped")


def _exit_now(sig: signal.Signals) -> None:
    """A second stop signal means "now": skip the drain, and say so in the exit status.

    128 + signal number is the shell's code for "ended by a signal", so a supervisor does not
    mistake a cut drain for the clean exit 0 of a finished one.
    """
    log.warning("%s during shutdown: exiting now, in-flight requests are cut", sig.name)
    flush_access_log()
    os._exit(128 + sig)


def run(main: Callable[[], Awaitable[int]]) -> int:
    """Run a coroutine on uvloop when it is installed."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())
