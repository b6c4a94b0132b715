"""A tiny outbound (forward) HTTP proxy on 127.0.0.1, the kind HTTPS_PROXY names in a corporate
network: CONNECT tunnels (bytes piped both ways) and requests in absolute form, relayed.

It records what it was asked (request lines, CONNECT targets, Proxy-Authorization values), can
demand credentials (407) or refuse every CONNECT, and can go silent after reading a CONNECT. It
resolves only the names it is given (`hosts`, by default upstream.test -> 127.0.0.1) and loopback
addresses, never through DNS: a test that reaches upstream.test proves the proxy, not the client,
resolved the name, and nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from yarl import URL

from raw_upstream import close_server


@dataclass
class ForwardProxy:
    hosts: dict[str, str] = field(default_factory=lambda: {"upstream.test": "127.0.0.1"})
    credentials: tuple[str, str] | None = None  # demanded as Basic Proxy-Authorization, else 407
    refuse: str | None = None  # answer every CONNECT with this status, e.g. "403 Forbidden"
    silent: bool = False  # read a CONNECT, then never answer
    connections: int = 0
    request_lines: list[str] = field(default_factory=list)
    connects: list[str] = field(default_factory=list)  # CONNECT targets, in order
    heads: list[str] = field(default_factory=list)  # every request head as received
    authorizations: list[str | None] = field(default_factory=list)  # Proxy-Authorization per request
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    def url(self, userinfo: str = "") -> str:
        """http://[userinfo@]127.0.0.1:port, as HTTPS_PROXY would say it."""
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        assert self._server is not None
        await close_server(self._server, self._tasks)

    def _resolve(self, host: str) -> str | None:
        if host in self.hosts:
            return self.hosts[host]
        try:
            return host if ipaddress.ip_address(host.strip("[]")).is_loopback else None
        except ValueError:
            return None  # a real name: never looked up here

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        upstreams: dict[tuple[str, int], tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        try:
            while True:
                try:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if not await self._handle(head, reader, writer, upstreams):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            for _, upstream_writer in upstreams.values():
                upstream_writer.close()
            writer.close()
            self._tasks.discard(task)

    async def _handle(
        self,
        head: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstreams: dict[tuple[str, int], tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    ) -> bool:
        """One request; whether the client connection carries on."""
        request_line, *lines = head[:-4].split("\r\n")
        headers = {n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines)}
        method, target, _ = request_line.split(" ", 2)
        self.heads.append(head)
        self.request_lines.append(request_line)
        self.authorizations.append(headers.get("proxy-authorization"))
        if self.credentials is not None:
            expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
            if headers.get("proxy-authorization") != expected:
                await _answer(writer, "407 Proxy Authentication Required", 'Proxy-Authenticate: Basic realm="corp"\r\n')
                return False
        if method == "CONNECT":
            self.connects.append(target)
            if self.silent:
                await reader.read()  # until the client gives up
                return False
            if self.refuse is not None:
                await _answer(writer, self.refuse)
                return False
            host, _, port = target.rpartition(":")
            address = self._resolve(host)
            if address is None:
                await _answer(writer, "502 Bad Gateway")
                return False
            upstream_reader, upstream_writer = await asyncio.open_connection(address, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
            return False
        # Absolute form: relay to the origin in origin form, without the Proxy-* headers.
        url = URL(target)
        address = self._resolve(url.raw_host or "") if url.absolute else None
        if address is None or url.port is None:
            await _answer(writer, "400 Bad Request" if not url.absolute else "502 Bad Gateway")
            return False
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        key = (address, url.port)
        if key not in upstreams:
            upstreams[key] = await asyncio.open_connection(address, url.port)
        upstream_reader, upstream_writer = upstreams[key]
        kept = [line for line in lines if not line.lower().startswith("proxy-")]
        forwarded = f"{method} {url.raw_path_qs} HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in kept) + "\r\n"
        upstream_writer.write(forwarded.encode("latin-1") + body)
        response_head = await upstream_reader.readuntil(b"\r\n\r\n")
        length = 0 if method == "HEAD" else next(
            (int(line.partition(b":")[2]) for line in response_head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
            0,
        )
        writer.write(response_head + await upstream_reader.readexactly(length))
        await writer.drain()
        return True


async def _answer(writer: asyncio.StreamWriter, status: str, headers: str = "") -> None:
    writer.write(f"HTTP/1.1 {status}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        sink.close()


StartForwardProxy = Callable[..., Awaitable[ForwardProxy]]


@pytest.fixture
async def forward_proxy() -> AsyncIterator[StartForwardProxy]:
    """Start ForwardProxies (`await forward_proxy(credentials=("u", "p"))`), closed after the test."""
    started: list[ForwardProxy] = []

    async def start(**options: object) -> ForwardProxy:
        started.append(await ForwardProxy(**options).start())  # type: ignore[arg-type]
        return started[-1]

    yield start
    for proxy in started:
        await proxy.close()
