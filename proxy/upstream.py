"""The HTTP/1.1 client that talks to the upstreams.

Pooled keep-alive connections; the request head (and a body held in memory) in one write; the
response parsed by llhttp (through httptools) and its body handed on as it arrives, with the
upstream paused while the client is slower.

Why not aiohttp's ClientSession: per request it builds a URL, a request and a response object,
timers, trace hooks and cookie handling. Replacing it took the proxy's CPU per small GET from 432
to 274 us in one benchmark run (bench/), and it held the proxy below the unsigned aiohttp
passthrough it must beat (issue 7). The proxy needs one thing from a client: send exactly these
bytes to this origin, stream the answer back.

Through an outbound HTTP proxy (HTTPS_PROXY, HTTP_PROXY, NO_PROXY: proxy/outbound_proxy.py), chosen
once per origin when its pool is made: https:// origins are reached through a CONNECT tunnel that
TLS then runs over, http:// ones with requests in absolute form (RFC 9112 3.2.2) sent to the proxy.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import aiohappyeyeballs
from multidict import CIMultiDict
from yarl import URL

from proxy.outbound_proxy import OutboundProxies, OutboundProxy
from proxy.upstream_connection import UpstreamConnection
from proxy.upstream_response import ConnectionClosed, UpstreamError, UpstreamResponse, expire

# RFC 9110 9.2.2: a request a client may send again when its connection failed before any answer.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# RFC 9110 8.6: a POST/PUT/PATCH without a body still says so, or some servers wait for one.
BODY_EXPECTED = frozenset({"POST", "PUT", "PATCH"})
# Idle upstream connections are closed after this many seconds (well under CloudFront's and
# API Gateway's own idle limits, so we close first and never write into a connection they closed).
KEEPALIVE = 30.0
# The longest answer head an outbound proxy may send to CONNECT (its status line and headers).
CONNECT_ANSWER_LIMIT = 16 * 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?")


class ConnectFailed(UpstreamError):
    """No connection: refused, unknown host, unreachable network."""


class TLSFailed(ConnectFailed):
    """The TLS handshake failed: `exc` says why, with what to check."""

    @classmethod
    def from_ssl_error(cls, exc: ssl.SSLError) -> TLSFailed:
        if exc.reason == "WRONG_VERSION_NUMBER":  # the answer to our ClientHello was not TLS
            return cls("the upstream did not answer in TLS: is it plain HTTP on that port (http://)?")
        reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return cls(f"{reason} (see --ca-bundle)")
        return cls(reason)


class OutboundProxyRefused(ConnectFailed):
    """The outbound proxy would not carry the request: it refused the CONNECT, or answered a
    request in absolute form with 407 (RFC 9110 15.5.8: only a proxy sends that)."""


class ConnectTimeout(ConnectFailed):
    """No connection within the connect timeout."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where bytes go: scheme, host and port, and the Host header that names them."""

    secure: bool
    host: str
    port: int
    host_header: str

    @classmethod
    def parse(cls, origin: str) -> Origin:
        url = URL(origin)
        if url.scheme not in ("http", "https") or not url.host or url.port is None:
            raise ValueError(f"not an http(s) origin: {origin}")
        # host_port_subcomponent: brackets for IPv6, the port only when it is not the default.
        return cls(url.scheme == "https", url.host, url.port, url.host_port_subcomponent or url.host)

    @property
    def authority(self) -> str:
        """host:port with the host as the Host header spells it (IDNA, brackets for IPv6) and the
        port always: the target of a CONNECT (RFC 9110 9.3.6)."""
        if self.host_header.endswith(f":{self.port}"):
            return self.host_header
        return f"{self.host_header}:{self.port}"


class Pool:
    """An origin's idle connections and how to reach it, decided once when the pool is made."""

    __slots__ = ("absolute", "connect", "idle", "via")

    def __init__(self, origin: Origin, via: OutboundProxy | None) -> None:
        self.idle: list[UpstreamConnection] = []
        self.via = via  # the outbound proxy, or None: connect directly
        # Plain HTTP through the proxy: the request target in absolute form, this before the path.
        self.absolute: str | None = None
        # HTTPS through the proxy: the CONNECT request that opens a tunnel to the origin.
        self.connect: bytes | None = None
        if via is None:
            return
        authorization = f"Proxy-Authorization: {via.authorization}\r\n" if via.authorization else ""
        if origin.secure:
            target = origin.authority
            self.connect = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{authorization}\r\n".encode("ascii")
        else:
            # The Host header's own spelling: a proxy replaces Host with this authority (RFC 9112
            # 3.2.2), and Host must stay what the upstream expects.
            self.absolute = f"http://{origin.host_header}"


class UpstreamClient:
    """Keep-alive pools per origin; `request` sends one request and returns at its headers."""

    def __init__(
        self, tls: ssl.SSLContext, connect_timeout: float, proxies: OutboundProxies | None = None
    ) -> None:
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._proxies = proxies  # None: every origin is reached directly
        self._pools: dict[Origin, Pool] = {}

    def outbound_proxy(self, origin: Origin) -> OutboundProxy | None:
        """The outbound proxy requests to `origin` go through, or None when they go direct."""
        return self._pool(origin).via

    def _pool(self, origin: Origin) -> Pool:
        pool = self._pools.get(origin)
        if pool is None:
            via = None
            if self._proxies is not None:
                host = origin.authority.rpartition(":")[0].strip("[]")  # the IDNA form, as Go matches
                via = self._proxies.for_upstream(origin.secure, host, origin.port)
            pool = self._pools[origin] = Pool(origin, via)
        return pool

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncGenerator[bytes, None] | None,
        body_size: int,
        timeout: float,
    ) -> UpstreamResponse:
        """Send and wait at most `timeout` seconds (connecting included) for the response headers.

        `body` is bytes, or chunks adding up to `body_size` (sent while the answer is awaited)."""
        pool = self._pools.get(origin) or self._pool(origin)
        if pool.absolute is None:
            head = request_head(method, target, origin.host_header, headers, body_size)
        else:
            assert pool.via is not None
            head = request_head(method, pool.absolute + target, origin.host_header, headers, body_size, pool.via.authorization)
        if isinstance(body, bytes):
            head += body
        deadline = time.monotonic() + timeout
        response = None
        connection = self._pooled(pool.idle)
        if connection is not None:
            try:
                response = await self._exchange(connection, method, head, body, deadline)
            except ConnectionClosed:
                # The upstream closed an idle connection just as we used it (RFC 9112 9.3.1): if
                # nothing came back and the method allows it, the request goes again on a new one.
                # Chunks already consumed cannot go again.
                replayable = body is None or isinstance(body, bytes)
                if connection.answered or method not in IDEMPOTENT or not replayable:
                    raise
        if response is None:
            connection = await self._connect(origin, pool, deadline)
            response = await self._exchange(connection, method, head, body, deadline)
        if response.status == 407 and pool.absolute is not None:
            # The proxy's own refusal (its credentials), which the upstream never saw: passed on,
            # a client would take it for the upstream's answer, and a browser refuses it outright.
            response.close()
            raise OutboundProxyRefused(f"the outbound proxy {pool.via} refused the request: 407 {response.reason}")
        return response

    def _pooled(self, idle: list[UpstreamConnection]) -> UpstreamConnection | None:
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE:
                return connection
            connection.abandon()
        return None

    async def _connect(self, origin: Origin, pool: Pool, deadline: float) -> UpstreamConnection:
        """A new connection, within the connect timeout: TCP, and TLS for https (with an outbound
        proxy: TCP to the proxy, then the CONNECT exchange, then TLS through the tunnel)."""
        self._close_expired(pool.idle)
        limit = min(self._connect_timeout, max(deadline - time.monotonic(), 0))
        through = "" if pool.via is None else f" through the outbound proxy {pool.via}"
        try:
            async with asyncio.timeout(limit):
                return await self._open(origin, pool)
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {limit:g}s{through}") from None
        except ssl.SSLError as exc:
            # Through a proxy that inspects TLS, its own certificate is the one refused (--ca-bundle).
            raise TLSFailed(f"{TLSFailed.from_ssl_error(exc)}{through}") from None
        except OSError as exc:
            raise ConnectFailed(f"{exc.strerror or exc}{through}") from None

    async def _open(self, origin: Origin, pool: Pool) -> UpstreamConnection:
        """Happy Eyeballs (RFC 8305) over every address of the host, as aiohttp does: CloudFront
        names resolve to IPv6 and IPv4 addresses, and on a network where IPv6 goes nowhere trying
        the addresses one after the other would spend the whole connect timeout on the first.

        With an outbound proxy that host is the proxy's: the proxy resolves the origin's name."""
        loop = asyncio.get_running_loop()
        via = pool.via
        host, port = (origin.host, origin.port) if via is None else (via.host, via.port)
        try:
            addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            sock = await aiohappyeyeballs.start_connection(addresses, happy_eyeballs_delay=0.25, interleave=1)
        except OSError as exc:
            if via is None:
                raise
            raise ConnectFailed(f"cannot reach the outbound proxy {via}: {exc.strerror or exc}") from None
        try:
            if pool.connect is not None:
                assert via is not None
                await _tunnel(loop, sock, pool.connect, via)
            _, connection = await loop.create_connection(
                lambda: UpstreamConnection(pool.idle),
                sock=sock,
                ssl=self._tls if origin.secure else None,
                server_hostname=origin.host if origin.secure else None,
            )
        except BaseException:
            sock.close()
            raise
        return connection

    async def _exchange(
        self,
        connection: UpstreamConnection,
        method: str,
        head: bytes,
        body: bytes | AsyncGenerator[bytes, None] | None,
        deadline: float,
    ) -> UpstreamResponse:
        loop = connection.loop
        waiter: asyncio.Future[UpstreamResponse] = loop.create_future()
        connection.begin(method, waiter)
        assert connection.transport is not None
        connection.transport.write(head)
        if body is not None and not isinstance(body, bytes):
            connection.send_body_later(body)
        timer = loop.call_later(max(deadline - time.monotonic(), 0), expire, waiter)
        try:
            return await waiter
        except BaseException:
            connection.abandon()  # timed out, broken, or the client left: never reused
            raise
        finally:
            timer.cancel()

    def _close_expired(self, pool: list[UpstreamConnection]) -> None:
        """Idle connections past KEEPALIVE close now (the pool is LIFO: they sit at its start)."""
        now = time.monotonic()
        while pool and (pool[0].closed or now - pool[0].idle_since >= KEEPALIVE):
            pool.pop(0).abandon()

    async def close(self) -> None:
        for pool in self._pools.values():
            for connection in pool.idle:
                connection.abandon()
            pool.idle.clear()


async def _tunnel(loop: asyncio.AbstractEventLoop, sock: socket.socket, request: bytes, via: OutboundProxy) -> None:
    """Ask the outbound proxy for a tunnel (RFC 9110 9.3.6) on a connected socket; return once
    it agreed (2xx), with nothing read past its answer. Errors name the proxy by host:port only."""
    await loop.sock_sendall(sock, request)
    head = b""
    while (end := head.find(b"\r\n\r\n")) < 0:
        if len(head) > CONNECT_ANSWER_LIMIT:
            raise ConnectFailed(f"the outbound proxy {via} sent an answer to CONNECT over {CONNECT_ANSWER_LIMIT // 1024} KiB")
        data = await loop.sock_recv(sock, 4096)
        if not data:
            raise ConnectFailed(f"the outbound proxy {via} closed the connection without answering CONNECT")
        head += data
    status_line = head.partition(b"\r\n")[0]
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise ConnectFailed(f"the outbound proxy {via} did not answer CONNECT in HTTP/1.1: {_printable(status_line)}")
    if not match.group(1).startswith(b"2"):
        raise OutboundProxyRefused(f"the outbound proxy {via} refused CONNECT: {_printable(status_line[9:])}")
    if end + 4 < len(head):
        # The upstream speaks only after our TLS hello: whatever came first is not from it.
        raise ConnectFailed(f"the outbound proxy {via} sent bytes after agreeing to CONNECT")


def _printable(text: bytes) -> str:
    """A proxy's status line for an error message: printable ASCII, at most 200 characters."""
    shown = "".join(c if " " <= c <= "~" else "?" for c in text[:200].decode("latin-1"))
    return shown.strip()


def request_head(
    method: str, target: str, host: str, headers: CIMultiDict[str], body_size: int,
    proxy_authorization: str | None = None,
) -> bytes:
    """The request line and headers, ending in the blank line; `proxy_authorization` for a plain
    HTTP request sent to an outbound proxy with credentials.

    Header values reached us through aiohttp's parser, which refuses CR and LF, but a line break
    in any of them would let the client smuggle a second request in the proxy's signed connection,
    so the count of line breaks is checked once for the whole head."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if proxy_authorization:
        lines.append(f"Proxy-Authorization: {proxy_authorization}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body_size or method in BODY_EXPECTED:
        lines.append(f"Content-Length: {body_size}")
    text = "\r\n".join(lines)
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks:
        raise ValueError("a header or the target contains a line break")
    return (text + "\r\n\r\n").encode("utf-8", "surrogateescape")
