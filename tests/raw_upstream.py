"""An upstream on 127.0.0.1 that answers with exact bytes, scripted per connection.

The proxy's HTTP client (proxy/upstream.py) must cope with what real servers do on the wire: close
idle connections, answer before reading a body, send 1xx, frame bodies three ways, stall. A script
is a coroutine given each accepted connection; the server counts connections and records requests
and which connections the client closed, so a test can tell reuse from reconnecting.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Request:
    head: bytes
    body: bytes
    connection: int  # 1 for the first connection the server accepted

    @property
    def method(self) -> str:
        return self.head.split(b" ", 1)[0].decode()

    def header(self, name: str) -> str | None:
        for line in self.head.decode("latin-1").split("\r\n")[1:]:
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == name.lower():
                return value.strip()
        return None


@dataclass
class Conn:
    """One accepted connection, as a script sees it."""

    server: RawUpstream
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    number: int

    async def request(self, body_limit: int | None = None) -> Request | None:
        """The next request (its body up to `body_limit` bytes), or None when the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.server.closed_by_client.append(self.number)
            return None
        request = Request(head, b"", self.number)
        length = int(request.header("Content-Length") or 0)
        request.body = await self.reader.readexactly(length if body_limit is None else min(length, body_limit))
        self.server.requests.append(request)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_client_closes(self, timeout: float = 3.0) -> int:
        """Wait for the client to close its side; how many bytes it sent meanwhile (dropped)."""
        dropped = 0
        try:
            async with asyncio.timeout(timeout):
                while data := await self.reader.read(65536):
                    dropped += len(data)
        except ConnectionError:
            pass
        self.server.closed_by_client.append(self.number)
        return dropped


Script = Callable[[Conn], Awaitable[None]]


@dataclass
class RawUpstream:
    script: Script
    tls: ssl.SSLContext | None = None
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    closed_by_client: list[int] = field(default_factory=list)  # connection numbers, in order
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self.script(Conn(self, reader, writer, self.connections))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-script: what several tests provoke
        except asyncio.CancelledError:
            pass  # close() at the end of the test (Python 3.11's start_server logs a cancelled task)
        finally:
            writer.close()
            self._tasks.discard(task)

    def sockets_held_by_us(self) -> int:
        """How many sockets this process holds open to this server (Linux /proc): a connection the
        client gave up must not linger, e.g. while the kernel tries to flush a buffer into it."""
        inodes = set()
        for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
            with open(table) as rows:
                for row in list(rows)[1:]:
                    fields = row.split()
                    if int(fields[2].rsplit(":", 1)[1], 16) == self.port:  # remote port
                        inodes.add(fields[9])
        held = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                held += os.readlink(f"/proc/self/fd/{fd}").removeprefix("socket:[").removesuffix("]") in inodes
            except OSError:
                pass  # closed meanwhile (the listing's own descriptor)
        return held

    async def wait_closed_by_client(self, number: int, timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while number not in self.closed_by_client:
                await asyncio.sleep(0.01)

    async def close(self) -> None:
        assert self._server is not None
        await close_server(self._server, self._tasks)


async def close_server(server: asyncio.Server, tasks: set[asyncio.Task[None]]) -> None:
    """Stop accepting, cancel the connections' scripts still running, wait until all is closed."""
    server.close()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await server.wait_closed()


Answer = bytes | tuple[bytes, ...]  # a tuple: pieces sent in separate writes, 20 ms apart


def answering(*answers: Answer, then_close: bool = False) -> Script:
    """Answer the n-th request on each connection with answers[n] (the last one repeats); with
    `then_close`, close after the first answer (a body delimited by the end of the connection)."""

    async def script(conn: Conn) -> None:
        n = 0
        while await conn.request() is not None:
            answer = answers[min(n, len(answers) - 1)]
            for i, piece in enumerate((answer,) if isinstance(answer, bytes) else answer):
                if i:
                    await asyncio.sleep(0.02)
                await conn.send(piece)
            n += 1
            if then_close:
                return

    return script


def stalling(before_stalling: bytes = b"") -> Script:
    """The first connection takes a request, sends `before_stalling`, then waits for the client to
    hang up; later connections answer OK."""

    async def script(conn: Conn) -> None:
        if conn.number > 1:
            return await answering(OK)(conn)
        await conn.request()
        if before_stalling:
            await conn.send(before_stalling)
        await conn.until_client_closes()

    return script


Serve = Callable[..., Awaitable[RawUpstream]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start RawUpstreams (`await serve(script, tls=None)`), closed at the end of the test."""
    started: list[RawUpstream] = []

    async def start(script: Script, tls: ssl.SSLContext | None = None) -> RawUpstream:
        started.append(await RawUpstream(script, tls).start())
        return started[-1]

    yield start
    for upstream in started:
        await upstream.close()
