"""One upstream HTTP/1.1 connection: the response parsed by llhttp (through httptools), its body
handed on as it arrives, the upstream paused while the client is slower, the request body streamed
beside it. proxy/upstream.py pools these connections and sends requests over them."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any

import httptools
from multidict import CIMultiDict

# Response bytes held for a slow client before the upstream is paused (resumed once they are
# handed on). 100 MiB downloads, 3 runs each: 256 KiB gave 0.83-1.07x direct speed, 512 KiB
# 0.96-1.00x, 1 MiB no better; each step adds to the proxy's peak memory.
HIGH_WATER = 512 * 1024
# A body with a Content-Length that takes more than one read is read straight into buffers the
# response owns and handed on as views of them, not copied out of a shared buffer by llhttp: each
# downloaded byte is copied once in user space (kernel to buffer) instead of twice or three times.
ARENA_SIZE = 1024 * 1024
MIN_READ = 64 * 1024  # a buffer with less room left is retired rather than read into
ARENAS_KEPT = 1  # a flushed buffer kept per response for its next reads


class UpstreamError(Exception):
    """The upstream broke the exchange (closed early, sent something that is not HTTP)."""


class ConnectionClosed(UpstreamError):
    """The upstream closed the connection."""


class UpstreamResponse:
    """Status and headers of an upstream answer; its body is read with `read_chunk` or `read`.

    The body is buffered here, not in the connection: once the upstream has sent the whole message
    the connection goes back to the pool while the client may still be reading.
    """

    __slots__ = ("status", "reason", "headers", "_connection", "_chunks", "_buffered", "_complete",
                 "_error", "_waiter", "_loop", "_until_close", "_arena", "_arena_view", "_offset", "_tail_start",
                 "_retired", "_free")

    def __init__(self, connection: UpstreamConnection, status: int, reason: str, headers: CIMultiDict[str]):
        self.status = status
        self.reason = reason
        self.headers = headers
        self._connection: UpstreamConnection | None = connection
        self._chunks: collections.deque[bytes | memoryview] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._loop = connection.loop  # asyncio.get_running_loop() is a getpid() per wait
        # No Content-Length and not chunked: the body ends when the connection does (RFC 9112 6.3).
        # Chunked means chunked as the final coding, of all Transfer-Encoding lines joined (RFC
        # 9110 5.3), as llhttp reads it: "gzip" then "chunked" lines are chunked, "chunked, gzip" not.
        codings = headers.getall("Transfer-Encoding", None)
        chunked = codings is not None and ",".join(codings).rsplit(",", 1)[-1].strip().lower() == "chunked"
        self._until_close = not chunked and "Content-Length" not in headers
        # Read buffers (see ARENA_SIZE): the one being read into, the reads' position in it, where
        # the last queued view starts when the next read may extend it (-1: it may not), buffers
        # retired while views of them may still be unsent, and flushed ones ready for reuse.
        self._arena: bytearray | None = None
        self._arena_view = memoryview(b"")
        self._offset = 0
        self._tail_start = -1
        self._retired: list[bytearray] = []
        self._free: list[bytearray] = []

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    def at_eof(self) -> bool:
        return self._complete and not self._chunks

    async def read_chunk(self, idle_timeout: float | None = None) -> bytes | memoryview:
        """What has arrived since the last call (waiting for it if nothing has), b"" at the end.

        A memoryview is valid until `recycle` is called: write it out before that.
        Raises UpstreamError when the body broke off and TimeoutError when nothing arrived for
        `idle_timeout` seconds. A cancelled call consumes nothing."""
        if not self._chunks and not self._complete and self._error is None:
            await self._wait(idle_timeout)
        if self._chunks:
            self._tail_start = -1
            chunks = self._chunks
            if len(chunks) == 1 or isinstance(chunks[0], memoryview):
                # Views of successive reads into one buffer are one view already: of two buffers,
                # one goes now and the other on the next call, with no copy.
                data = chunks.popleft()
            else:
                # Everything that arrived, in one piece: one write to the client instead of one
                # per socket read (the copy costs less than the writes it saves).
                data = b"".join(chunks)
                chunks.clear()
            self._buffered -= len(data)
            connection = self._connection
            if connection is not None and connection.reading_paused and self._buffered <= HIGH_WATER:
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
        loop = self._loop
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(idle_timeout, expire, waiter) if idle_timeout else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def recycle(self) -> None:
        """Everything read_chunk returned has been written out and flushed: the read buffers behind
        those views may be read into again."""
        if self._chunks:
            return  # views of reads since then are still queued
        self._offset = 0
        while self._retired and len(self._free) < ARENAS_KEPT:
            self._free.append(self._retired.pop())
        self._retired.clear()

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

    def _room(self, body_left: int) -> memoryview:
        """Where the next read of the body goes: at most `body_left` bytes of a response buffer."""
        room = len(self._arena_view) - self._offset
        if room < MIN_READ and room < body_left:
            if self._arena is not None:
                self._retired.append(self._arena)
            arena = self._free.pop() if self._free else bytearray(min(body_left, ARENA_SIZE))
            self._arena, self._arena_view, self._offset, self._tail_start = arena, memoryview(arena), 0, -1
        return self._arena_view[self._offset : self._offset + body_left]

    def _feed_read(self, nbytes: int) -> None:
        """`nbytes` of the body were read into the room `_room` gave."""
        start, end = self._offset, self._offset + nbytes
        self._offset = end
        if self._tail_start >= 0:  # the last queued view ends where this read begins: extend it
            self._chunks[-1] = self._arena_view[self._tail_start : end]
            self._buffered += nbytes
            if self._buffered > HIGH_WATER and self._connection is not None:
                self._connection.pause_reading()
        else:
            self._feed(self._arena_view[start:end])  # type: ignore[arg-type]
            self._tail_start = start
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


def expire(waiter: asyncio.Future[Any]) -> None:
    """A timer's end: the wait it guards fails with TimeoutError (if it has not finished)."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())


# Heads, short bodies and chunked ones are read into one buffer that every connection shares (long
# bodies with a Content-Length go to the response's own, see ARENA_SIZE). Sharing is safe: the
# event loop calls get_buffer(), reads and calls buffer_updated() in one step, and llhttp's
# callbacks copy out what they keep before anything else runs (as http_server.py's client reads do).
READ_SIZE = 256 * 1024
_READ_BUFFER = memoryview(bytearray(READ_SIZE))


class UpstreamConnection(asyncio.BufferedProtocol):
    """One upstream connection; carries one exchange at a time (no pipelining)."""

    def __init__(self, pool: list[UpstreamConnection]):
        # Kept: asyncio.get_running_loop() costs a getpid() system call on every use (CPython 3.11).
        self.loop = asyncio.get_running_loop()
        self.pool = pool  # the idle list of this connection's origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reading_paused = False
        self.answered = False  # any byte of an answer arrived in this exchange
        self._parser: httptools.HttpResponseParser | None = None  # set while an exchange runs
        self._llhttp: httptools.HttpResponseParser | None = None  # kept across exchanges
        self._head_request = False
        self._body_left = 0  # body bytes still to come, read into the response's own buffers
        self._body_seen = 0  # body bytes llhttp handed over
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
        self._body_left = 0
        self._body_seen = 0
        self._sending = None
        self._body_pending = False
        self.answered = False

    def send_body_later(self, chunks: AsyncGenerator[bytes, None]) -> None:
        """Stream a large body while the answer is awaited: an upstream may answer (413, 403)
        before reading it all, and that answer must reach the client."""
        self._body_pending = True
        self._sending = asyncio.ensure_future(self._send(chunks))
        self._sending.add_done_callback(self._sent)

    async def _send(self, chunks: AsyncGenerator[bytes, None]) -> None:
        # Closed here, even when cancelled or stopped early, not whenever it is collected: the
        # body's source (a spill file) is reused once nothing reads it.
        async with contextlib.aclosing(chunks):
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

    # asyncio.BufferedProtocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body_left and self._response is not None:
            return self._response._room(self._body_left)
        return _READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        if self._body_left and self._response is not None:
            self._body_left -= nbytes  # reads are never larger than what is left of the body
            self._response._feed_read(nbytes)
            if not self._body_left:
                self._message_done()
            return
        self.data_received(_READ_BUFFER[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        parser = self._parser
        if parser is None:
            self.abandon()  # bytes outside any exchange: this connection is out of step
            return
        self.answered = True
        try:
            parser.feed_data(data)
            if self._parser is parser and self._response is not None:
                self._read_rest_directly()
        except httptools.HttpParserUpgrade:
            # Upgrade is hop-by-hop and never forwarded, so a 101 answers a question nobody asked.
            self._break(UpstreamError("switched protocols (101) though the proxy never asks it to"))
            self.abandon()
        except httptools.HttpParserError as exc:
            self._break(UpstreamError(f"sent an invalid HTTP response ({exc})"))
            self.abandon()

    def _read_rest_directly(self) -> None:
        """A body with a Content-Length that this read did not finish: the rest is read into the
        response's buffers without llhttp, which is left mid-body and replaced for the next
        exchange."""
        assert self._response is not None
        length = self._response.content_length
        if length is None or self._response._until_close or length <= self._body_seen:
            return  # chunked (llhttp finds its end) or read until close
        self._body_left = length - self._body_seen
        self._llhttp = None

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionClosed("closed the connection"))
        if self._parser is not None:
            if self._response is not None and self._response._until_close and exc is None:
                self._message_done()
            else:
                self._break(ConnectionClosed("closed the connection before the response was complete"))

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
        self._drain_waiter = self.loop.create_future()
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
            [(n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")) for n, v in self._raw_headers]
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
            self._body_seen += len(body)
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif self._parser is not None:
            self._message_done()
