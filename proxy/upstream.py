"""The HTTP/1.1 client that talks to the upstreams.

Pooled keep-alive connections; the request head (and a body held in memory) in one write; the
response parsed by llhttp (through httptools) and its body handed on as it arrives, with the
upstream paused while the client is slower.

Why not aiohttp's ClientSession: per request it builds a URL, a request and a response object,
timers, trace hooks and cookie handling. Replacing it took the proxy's CPU per small GET from 432
to 274 us in one benchmark run (bench/), and it held the proxy below the unsigned aiohttp
passthrough it must beat (issue 7). The proxy needs one thing from a client: send exactly these
bytes to this origin, stream the answer back.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import aiohappyeyeballs
from multidict import CIMultiDict
from yarl import URL

from proxy.upstream_connection import UpstreamConnection
from proxy.upstream_response import ConnectionClosed, UpstreamError, UpstreamResponse, expire

# RFC 9110 9.2.2: a request a client may send again when its connection failed before any answer.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# RFC 9110 8.6: a POST/PUT/PATCH without a body still says so, or some servers wait for one.
BODY_EXPECTED = frozenset({"POST", "PUT", "PATCH"})
# Idle upstream connections are closed after this many seconds (well under CloudFront's and
# API Gateway's own idle limits, so we close first and never write into a connection they closed).
KEEPALIVE = 30.0


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


class UpstreamClient:
    """Keep-alive pools per origin; `request` sends one request and returns at its headers."""

    def __init__(self, tls: ssl.SSLContext, connect_timeout: float) -> None:
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._idle: dict[Origin, list[UpstreamConnection]] = {}

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
        head = request_head(method, target, origin.host_header, headers, body_size)
        if isinstance(body, bytes):
            head += body
        deadline = time.monotonic() + timeout
        connection = self._pooled(origin)
        if connection is not None:
            try:
                return await self._exchange(connection, method, head, body, deadline)
            except ConnectionClosed:
                # The upstream closed an idle connection just as we used it (RFC 9112 9.3.1): if
                # nothing came back and the method allows it, the request goes again on a new one.
                # Chunks already consumed cannot go again.
                replayable = body is None or isinstance(body, bytes)
                if connection.answered or method not in IDEMPOTENT or not replayable:
                    raise
        connection = await self._connect(origin, deadline)
        return await self._exchange(connection, method, head, body, deadline)

    def _pooled(self, origin: Origin) -> UpstreamConnection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE:
                return connection
            connection.abandon()
        return None

    async def _connect(self, origin: Origin, deadline: float) -> UpstreamConnection:
        pool = self._idle.setdefault(origin, [])
        self._close_expired(pool)
        limit = min(self._connect_timeout, max(deadline - time.monotonic(), 0))
        try:
            async with asyncio.timeout(limit):
                return await self._open(origin, pool)
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {limit:g}s") from None
        except ssl.SSLError as exc:
            raise TLSFailed.from_ssl_error(exc) from None
        except OSError as exc:
            raise ConnectFailed(exc.strerror or str(exc)) from None

    async def _open(self, origin: Origin, pool: list[UpstreamConnection]) -> UpstreamConnection:
        """Happy Eyeballs (RFC 8305) over every address of the host, as aiohttp does: CloudFront
        names resolve to IPv6 and IPv4 addresses, and on a network where IPv6 goes nowhere trying
        the addresses one after the other would spend the whole connect timeout on the first."""
        loop = asyncio.get_running_loop()
        addresses = await loop.getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM)
        sock = await aiohappyeyeballs.start_connection(addresses, happy_eyeballs_delay=0.25, interleave=1)
        try:
            _, connection = await loop.create_connection(
                lambda: UpstreamConnection(pool),
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
        for pool in self._idle.values():
            for connection in pool:
                connection.abandon()
            pool.clear()


def request_head(method: str, target: str, host: str, headers: CIMultiDict[str], body_size: int) -> bytes:
    """The request line and headers, ending in the blank line.

    Header values reached us through aiohttp's parser, which refuses CR and LF, but a line break
    in any of them would let the client smuggle a second request in the proxy's signed connection,
    so the count of line breaks is checked once for the whole head."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body_size or method in BODY_EXPECTED:
        lines.append(f"Content-Length: {body_size}")
    text = "\r\n".join(lines)
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks:
        raise ValueError("a header or the target contains a line break")
    return (text + "\r\n\r\n").encode("utf-8", "surrogateescape")
