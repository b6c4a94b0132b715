"""An upstream answer as the proxy's client hands it on: status, headers, and a body buffered
between the connection that reads it and the client that is sent it, with the upstream paused
while that client is slower. proxy/upstream_connection.py reads into it."""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict

if TYPE_CHECKING:
    from proxy.upstream_connection import UpstreamConnection

# Response bytes held for a slow client before the upstream is paused (resumed once they are
# handed on). 100 MiB downloads, 3 runs each: 256 KiB gave 0.83-1.07x direct speed, 512 KiB
# 0.96-1.00x, 1 MiB no better; each step adds to the proxy's peak memory.
HIGH_WATER = 512 * 1024
# A body with a Content-Length that takes more than one read is read straight into buffers the
# response owns and handed on as views of them, not copied out of a shared buffer by llhttp: each
# downloaded byte is copied once in user space (kernel to buffer) instead of twice or three times.
# A buffer is read into again once the client's socket has taken every view of it; one that fills
# up before that is let go and lives on only while views of it are queued or unsent (a slow client
# keeps at most a few, the upstream being paused at HIGH_WATER).
ARENA_SIZE = 1024 * 1024
MIN_READ = 64 * 1024  # a buffer with less room left is let go rather than read into


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
                 "_error", "_waiter", "_loop", "_until_close", "_arena_view", "_offset", "_tail_start")

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
        # The read buffer (see ARENA_SIZE), the reads' position in it, and where the last queued
        # view starts when the next read may extend it (-1: it may not).
        self._arena_view = memoryview(b"")
        self._offset = 0
        self._tail_start = -1

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
        """Everything read_chunk returned has been written out and flushed: the read buffer behind
        those views may be read into again from its start."""
        if not self._chunks:  # else views of reads since then are still queued in it
            self._offset = 0

    def close(self) -> None:
        """Stop reading: a connection whose response is not complete cannot be reused."""
        if self._connection is not None and not self._complete:
            self._connection.abandon()
        self._connection = None

    # Called by the connection.
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._hold(len(data))

    def _room(self, body_left: int) -> memoryview:
        """Where the next read of the body goes: at most `body_left` bytes of a response buffer."""
        room = len(self._arena_view) - self._offset
        if room < MIN_READ and room < body_left:
            self._arena_view = memoryview(bytearray(min(body_left, ARENA_SIZE)))
            self._offset, self._tail_start = 0, -1
        return self._arena_view[self._offset : self._offset + body_left]

    def _feed_read(self, nbytes: int) -> None:
        """`nbytes` of the body were read into the room `_room` gave."""
        start, end = self._offset, self._offset + nbytes
        self._offset = end
        if self._tail_start >= 0:  # the last queued view ends where this read begins: extend it
            self._chunks[-1] = self._arena_view[self._tail_start : end]
        else:
            self._chunks.append(self._arena_view[start:end])
            self._tail_start = start
        self._hold(nbytes)

    def _hold(self, nbytes: int) -> None:
        """`nbytes` more are queued: pause the upstream past HIGH_WATER, wake the reader."""
        self._buffered += nbytes
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


def expire(waiter: asyncio.Future[Any]) -> None:
    """A timer's end: the wait it guards fails with TimeoutError (if it has not finished)."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())
