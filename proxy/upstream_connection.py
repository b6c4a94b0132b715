"""One upstream HTTP/1.1 connection: the response parsed by llhttp (through httptools), its body
fed to an UpstreamResponse (proxy/upstream_response.py) as it arrives, reading paused while that
holds too much, the request body streamed beside it. proxy/upstream.py pools these connections and
sends requests over them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator

import httptools
from multidict import CIMultiDict

from proxy.upstream_response import ConnectionClosed, UpstreamError, UpstreamResponse

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
