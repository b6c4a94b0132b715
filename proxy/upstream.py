"""The HTTP/1.1 client that talks to the upstreams.

Pooled keep-alive connections; the request head (and a body held in memory) in one write; the
response parsed by llhttp (through httptools) and its body handed on as it arrives, with the
upstream paused while the client is slower.

Why not aiohttp's ClientSession: per request it builds a URL, a request and a response object,
timers, trace hooks and cookie handling. Measured on the benchmark (bench/) that was about half of
the proxy's CPU per small GET, more than signing, routing and aiohttp's server together, and it
held the proxy below the unsigned aiohttp passthrough it must beat (issue 7). The proxy needs one
thing from a client: send exactly these bytes to this origin, stream the answer back.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohappyeyeballs
import httptools
from multidict import CIMultiDict
from yarl import URL

# RFC 9110 9.2.2: a request a client may send again when its connection failed before any answer.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# RFC 9110 8.6: a POST/PUT/PATCH without a body still says so, or some servers wait for one.
BODY_EXPECTED = frozenset({"POST", "PUT", "PATCH"})
# Idle upstream connections are closed after this many seconds (well under CloudFront's and
# API Gateway's own idle limits, so we close first and never write into a connection they closed).
KEEPALIVE = 30.0
# Response bytes held for a slow client before the upstream is paused, and resumed (the kernel's
# socket buffers hold more than this already; more here only adds to the proxy's memory).
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """The upstream broke the exchange (closed early, sent something that is not HTTP)."""


class ConnectFailed(UpstreamError):
    """No connection: refused, unknown host, unreachable network."""


class TLSFailed(ConnectFailed):
    """The TLS handshake failed (usually an untrusted or mismatched certificate)."""


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


class UpstreamResponse:
    """Status and headers of an upstream answer; its body is read with `read_chunk` or `read`.

    The body is buffered here, not in the connection: once the upstream has sent the whole message
    the connection goes back to the pool while the client may still be reading.
    """

    __slots__ = ("status", "reason", "headers", "_connection", "_chunks", "_buffered", "_complete",
                 "_error", "_waiter", "_until_close")

    def __init__(self, connection: _Connection, status: int, reason: str, headers: CIMultiDict[str]):
        self.status = status
        self.reason = reason
        self.headers = headers
        self._connection: _Connection | None = connection
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        # No Content-Length and not chunked: the body ends when the connection does (RFC 9112 6.3).
        # Chunked means chunked as the final coding, of all Transfer-Encoding lines joined (RFC
        # 9110 5.3), as llhttp reads it: "gzip" then "chunked" lines are chunked, "chunked, gzip" not.
        codings = headers.getall("Transfer-Encoding", None)
        chunked = codings is not None and ",".join(codings).rsplit(",", 1)[-1].strip().lower() == "chunked"
        self._until_close = not chunked and "Content-Length" not in headers

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def complete(self) -> bool:
        """The whole body has arrived (it may still be waiting here to be read)."""
        return self._complete

    def at_eof(self) -> bool:
        return self._complete and not self._chunks

    async def read_chunk(self, idle_timeout: float | None = None) -> bytes:
        """What has arrived since the last call (waiting for it if nothing has), b"" at the end.

        Raises UpstreamError when the body broke off and TimeoutError when nothing arrived for
        `idle_timeout` seconds. A cancelled call consumes nothing."""
        if not self._chunks and not self._complete and self._error is None:
            await self._wait(idle_timeout)
        if self._chunks:
            # One chunk at a time: joining them would copy every byte once more.
            data = self._chunks.popleft()
            self._buffered -= len(data)
            connection = self._connection
            if connection is not None and connection.reading_paused and self._buffered <= LOW_WATER:
                connection.resume_reading()
            return data
        if self._error is not None:
            raise self._error
        return b""

    async def read(self, idle_timeout: float | None = None) -> bytes:
        """The whole body."""
        parts = []
        while chunk := await self.read_chunk(idle_timeout):
            parts.append(chunk)
        return b"".join(parts)

    async def _wait(self, idle_timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(idle_timeout, _expire, waiter) if idle_timeout else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        """Stop reading: a connection whose response is not complete cannot be reused."""
        if self._connection is not None and not self._complete:
            self._connection.abandon()
        self._connection = None

    # Called by the connection.
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and self._connection is not None:
            self._connection.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._connection = None
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._complete:
            return
        self._error = error
        self._connection = None
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Closed(UpstreamError):
    """The upstream closed the connection."""


class _Connection(asyncio.Protocol):
    """One upstream connection; carries one exchange at a time (no pipelining)."""

    def __init__(self, pool: list[_Connection]):
        self.pool = pool  # the idle list of this connection's origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reading_paused = False
        self.answered = False  # any byte of an answer arrived in this exchange
        self._parser: httptools.HttpResponseParser | None = None  # set while an exchange runs
        self._llhttp: httptools.HttpResponseParser | None = None  # kept across exchanges
        self._head_request = False
        self._headers_waiter: asyncio.Future[UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._interim = False
        self._keep_alive = False
        self._sending: asyncio.Task[None] | None = None
        self._body_pending = False  # some of the request body is still to be written
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # The exchange.
    def begin(self, method: str, waiter: asyncio.Future[UpstreamResponse]) -> None:
        if self._llhttp is None:
            self._llhttp = httptools.HttpResponseParser(self)  # ~10 us: reused while it can be
        self._parser = self._llhttp
        self._head_request = method == "HEAD"
        self._headers_waiter = waiter
        self._response = None
        self._raw_headers = []
        self._reason = b""
        self._sending = None
        self._body_pending = False
        self.answered = False

    def send_body_later(self, chunks: AsyncIterator[bytes]) -> None:
        """Stream a large body while the answer is awaited: an upstream may answer (413, 403)
        before reading it all, and that answer must reach the client."""
        self._body_pending = True
        self._sending = asyncio.ensure_future(self._send(chunks))
        self._sending.add_done_callback(self._sent)

    async def _send(self, chunks: AsyncIterator[bytes]) -> None:
        async for chunk in chunks:
            # Wait for room before a write, not after it: the last chunk is then written in the
            # same step that ends the body, so an answer can never find it "still sending".
            if self._write_paused:
                await self._drain()
            if self.closed or self.transport is None:
                return
            self.transport.write(chunk)
        self._body_pending = False

    def _sent(self, task: asyncio.Task[None]) -> None:
        # A failed or cancelled body leaves the connection unusable; the failure itself (a write
        # into a connection the upstream closed after answering early) is expected, not an error.
        if task.cancelled() or task.exception() is not None:
            self.abandon()

    def abandon(self) -> None:
        """End this exchange and the connection with it (a client left, a body broke off)."""
        if self._sending is not None and not self._sending.done():
            self._sending.cancel()
        if self.transport is not None and not self.closed:
            if self._unsent():
                # close() would first flush the buffered rest of a body, holding the connection
                # open for as long as an upstream that stopped reading keeps it.
                self.transport.abort()
            else:
                self.transport.close()
        self.closed = True

    def _message_done(self) -> None:
        self._parser = None
        if self._response is not None:
            self._response._finish()
        if self._body_pending or self._unsent():
            # Answered before the whole body went out: the rest cannot be sent, nor the
            # connection reused with half a body in it.
            self.abandon()
        elif not self.closed:
            self._release()

    def _unsent(self) -> bool:
        """Bytes still in the transport's buffer: the sender handed over the last chunk, but the
        upstream, which answered early and stopped reading, never got it (RFC 9112 9.3)."""
        return self.transport is not None and self.transport.get_write_buffer_size() > 0

    def _release(self) -> None:
        if self.reading_paused:
            self.resume_reading()
        if self._keep_alive:
            self.idle_since = time.monotonic()
            self.pool.append(self)
        else:
            self.abandon()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            self.abandon()  # bytes outside any exchange: this connection is out of step
            return
        self.answered = True
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._break(UpstreamError(f"sent an invalid HTTP response ({exc})"))
            self.abandon()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(_Closed("closed the connection"))
        if self._parser is not None:
            if self._response is not None and self._response._until_close and exc is None:
                self._message_done()
            else:
                self._break(_Closed("closed the connection before the response was complete"))

    def _break(self, error: UpstreamError) -> None:
        self._parser = None
        if self._headers_waiter is not None and not self._headers_waiter.done():
            self._headers_waiter.set_exception(error)
        elif self._response is not None:
            self._response._fail(error)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    async def _drain(self) -> None:
        self._drain_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    # httptools callbacks
    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if status < 200:
            # 1xx (100 Continue, 103 Early Hints): interim, the final answer follows (RFC 9110 15.2).
            self._interim = True
            self._raw_headers = []
            self._reason = b""
            return
        self._keep_alive = self._parser.should_keep_alive()
        # aiohttp's server decodes request headers the same way, so bytes round-trip unchanged.
        headers = CIMultiDict(
            (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for n, v in self._raw_headers
        )
        self._response = UpstreamResponse(self, status, self._reason.decode("latin-1"), headers)
        if self._headers_waiter is not None and not self._headers_waiter.done():
            self._headers_waiter.set_result(self._response)
        if self._head_request:
            # llhttp cannot know a HEAD answer has no body (RFC 9110 9.3.2): end it here, and
            # give the next exchange a parser that is not waiting for that body.
            self._llhttp = None
            self._message_done()

    def on_body(self, body: bytes) -> None:
        if self._response is not None and self._parser is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif self._parser is not None:
            self._message_done()


class UpstreamClient:
    """Keep-alive pools per origin; `request` sends one request and returns at its headers."""

    def __init__(self, tls: ssl.SSLContext, connect_timeout: float) -> None:
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._idle: dict[Origin, list[_Connection]] = {}

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterator[bytes] | None,
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
            except _Closed:
                # The upstream closed an idle connection just as we used it (RFC 9112 9.3.1): if
                # nothing came back and the method allows it, the request goes again on a new one.
                # Chunks already consumed cannot go again.
                replayable = body is None or isinstance(body, bytes)
                if connection.answered or method not in IDEMPOTENT or not replayable:
                    raise
        connection = await self._connect(origin, deadline)
        return await self._exchange(connection, method, head, body, deadline)

    def _pooled(self, origin: Origin) -> _Connection | None:
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

    async def _connect(self, origin: Origin, deadline: float) -> _Connection:
        pool = self._idle.setdefault(origin, [])
        self._close_expired(pool)
        limit = min(self._connect_timeout, max(deadline - time.monotonic(), 0))
        try:
            async with asyncio.timeout(limit):
                return await self._open(origin, pool)
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {limit:g}s") from None
        except ssl.SSLError as exc:
            raise TLSFailed(getattr(exc, "verify_message", None) or exc.reason or str(exc)) from None
        except OSError as exc:
            raise ConnectFailed(exc.strerror or str(exc)) from None

    async def _open(self, origin: Origin, pool: list[_Connection]) -> _Connection:
        """Happy Eyeballs (RFC 8305) over every address of the host, as aiohttp does: CloudFront
        names resolve to IPv6 and IPv4 addresses, and on a network where IPv6 goes nowhere trying
        the addresses one after the other would spend the whole connect timeout on the first."""
        loop = asyncio.get_running_loop()
        addresses = await loop.getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM)
        sock = await aiohappyeyeballs.start_connection(addresses, happy_eyeballs_delay=0.25, interleave=1)
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(pool),
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
        connection: _Connection,
        method: str,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        deadline: float,
    ) -> UpstreamResponse:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[UpstreamResponse] = loop.create_future()
        connection.begin(method, waiter)
        assert connection.transport is not None
        connection.transport.write(head)
        if body is not None and not isinstance(body, bytes):
            connection.send_body_later(body)
        timer = loop.call_at(loop.time() + max(deadline - time.monotonic(), 0), _expire_headers, waiter)
        try:
            return await waiter
        except BaseException:
            connection.abandon()  # timed out, broken, or the client left: never reused
            raise
        finally:
            timer.cancel()

    def _close_expired(self, pool: list[_Connection]) -> None:
        """Idle connections past KEEPALIVE close now (the pool is LIFO: they sit at its start)."""
        now = time.monotonic()
        while pool and (pool[0].closed or now - pool[0].idle_since >= KEEPALIVE):
            pool.pop(0).abandon()

    async def close(self) -> None:
        for pool in self._idle.values():
            for connection in pool:
                connection.abandon()
            pool.clear()


def _expire_headers(waiter: asyncio.Future[UpstreamResponse]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


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
