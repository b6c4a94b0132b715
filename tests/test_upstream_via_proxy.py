"""What the proxy's own client sees when its upstream answers early, breaks off mid-body or is
left waiting: the proxy's HTTP client (proxy/upstream.py) inside the real proxy, against upstreams on
127.0.0.1 that send exact bytes (tests/raw_upstream.py) or the whole stack of tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from conftest import CREDENTIALS, Stack
from proxy.config import Settings, resolve_routes
from proxy.credentials import StaticCredentialSource
from proxy.server import RunningProxy, start_proxy
from proxy_process import isolated_env, spawn
from raw_upstream import OK, Conn, RawUpstream, Serve, answering, serve, stalling  # noqa: F401 (serve: a fixture)
from rawhttp import get, parse_response, raw_request

pytestmark = pytest.mark.timeout(10)  # a hang is a failure, not a stuck suite


@contextlib.asynccontextmanager
async def proxy_to(upstream: RawUpstream, **options: object) -> AsyncIterator[RunningProxy]:
    settings = Settings(listen="127.0.0.1:0", upstream=upstream.url, sign_host="x.execute-api.us-east-1.amazonaws.com", **options)
    running = await start_proxy(settings, resolve_routes(settings), lambda _route: StaticCredentialSource(CREDENTIALS))
    try:
        yield running
    finally:
        await running.close(0.1)


EARLY: list[tuple[str, bytes, bool]] = [
    # name, answer after the first 64 KiB of the body, the upstream closes (else it stops reading)
    ("413 and close", b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 13\r\nConnection: close\r\n\r\nbody too big!", True),
    ("403 kept open", b'HTTP/1.1 403 Forbidden\r\nContent-Length: 25\r\n\r\n{"message":"Forbidden!!"}', False),
]


@pytest.mark.parametrize(("answer", "closes"), [e[1:] for e in EARLY], ids=[e[0] for e in EARLY])
async def test_early_answer_to_a_large_upload_reaches_the_client(
    serve: Serve, client: aiohttp.ClientSession, answer: bytes, closes: bool
) -> None:
    """An upstream may refuse a 5 MiB body after reading 64 KiB of it (RFC 9112 9.3): the client
    must get that answer, not a 502 for the write that can no longer finish. 5 MiB is more than
    the kernel's socket buffers take (Linux's tcp_wmem allows 4 MiB), so when the answer comes part
    of the body is still in the proxy: that connection must not carry the next request."""

    async def refuse_early(conn: Conn) -> None:
        if conn.number > 1:
            return await answering(OK)(conn)
        request = await conn.request(body_limit=64 * 1024)
        assert request is not None and len(request.body) == 64 * 1024
        await conn.send(answer)
        if not closes:
            await asyncio.sleep(0.3)  # not reading: the rest of the body cannot be written
            await conn.until_client_closes()

    upstream = await serve(refuse_early)
    async with proxy_to(upstream, timeout=3.0) as running:
        url = f"http://127.0.0.1:{running.port}"
        async with client.post(f"{url}/upload", data=b"u" * (5 * 1024 * 1024)) as resp:
            assert (resp.status, await resp.read()) == (int(answer[9:12]), answer.partition(b"\r\n\r\n")[2])
        async with client.get(f"{url}/next") as resp:  # on a new connection: the old one has half a body in it
            assert (resp.status, await resp.read()) == (200, b"ok")
    assert upstream.connections == 2
    if not closes:
        await upstream.wait_closed_by_client(1)


BROKEN_THROUGH: list[tuple[str, bytes, str]] = [
    # name, what the upstream sends before closing, what the client sees
    ("small body cut", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", "502"),
    ("streamed body cut", b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"p" * 100_000, "truncated"),
    ("chunked body cut", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n", "truncated"),
    ("chunked on a second line, cut",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n", "truncated"),
]


@pytest.mark.parametrize(("answer", "seen"), [b[1:] for b in BROKEN_THROUGH], ids=[b[0] for b in BROKEN_THROUGH])
async def test_upstream_closing_mid_body_never_looks_complete(
    serve: Serve, client: aiohttp.ClientSession, answer: bytes, seen: str
) -> None:
    upstream = await serve(answering(answer, then_close=True))
    async with proxy_to(upstream) as running:
        url = f"http://127.0.0.1:{running.port}/cut"
        if seen == "502":
            async with client.get(url) as resp:
                assert resp.status == 502 and (await resp.json())["error"] == "upstream failed"
        else:
            with pytest.raises(aiohttp.ClientPayloadError):
                async with client.get(url) as resp:
                    assert resp.status == 200
                    await resp.read()


STALLED: list[tuple[str, bytes, str]] = [
    # name, what the upstream sends before it goes quiet, what the client sees
    ("small body", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", "502"),
    ("streamed body", b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"p" * 100_000, "truncated"),
]


@pytest.mark.parametrize(("answer", "seen"), [s[1:] for s in STALLED], ids=[s[0] for s in STALLED])
async def test_body_idle_past_idle_timeout_closes_the_upstream_connection(
    serve: Serve, client: aiohttp.ClientSession, answer: bytes, seen: str
) -> None:
    """The client is told (502, or a truncated body), and the upstream connection, with the rest
    of that body still to come, is closed rather than pooled."""
    upstream = await serve(stalling(answer))
    async with proxy_to(upstream, idle_timeout=0.3) as running:
        url = f"http://127.0.0.1:{running.port}/quiet"
        if seen == "502":
            async with client.get(url) as resp:
                assert resp.status == 502 and "--idle-timeout" in (await resp.json())["detail"]
        else:
            with pytest.raises(aiohttp.ClientPayloadError):
                async with client.get(url) as resp:
                    await resp.read()
        await upstream.wait_closed_by_client(1, timeout=1.0)
        async with client.get(url) as resp:
            assert (resp.status, await resp.read()) == (200, b"ok")
    assert upstream.connections == 2


async def test_client_hanging_up_before_the_answer_closes_the_upstream_connection(serve: Serve) -> None:
    upstream = await serve(stalling())
    async with proxy_to(upstream) as running:
        _, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(get(b"/slow"))
        async with asyncio.timeout(2):
            while not upstream.requests:
                await asyncio.sleep(0.01)
        writer.close()
        await upstream.wait_closed_by_client(1, timeout=1.0)
        assert (await raw_request(running.port, get(b"/after"))).status == 200


async def test_head_then_get_on_one_connection_through_the_stack(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.proxy.port)
    try:
        for method, body in (("HEAD", b""), ("GET", b"x" * 1234)):
            writer.write(f"{method} /prod/sized HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head = parse_response(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5))
            assert head.header("Content-Length") == "1234"
            assert await asyncio.wait_for(reader.readexactly(len(body)), 5) == body
    finally:
        writer.close()


async def test_a_request_line_over_aiohttps_default_limit_reaches_the_upstream(serve: Serve) -> None:
    """Long query strings (search APIs, many ids) pass: the proxy's request-line limit is 16 KiB,
    not aiohttp's 8190 bytes, which a header field keeps (tests/test_errors.py has both refusals)."""
    upstream = await serve(answering(OK))
    query = "ids=" + ",".join(str(n) for n in range(2500))  # ~12 KB
    async with proxy_to(upstream) as running:
        response = await raw_request(running.port, get(f"/items?{query}".encode()))
    assert response.status == 200
    assert upstream.requests[0].head.startswith(f"GET /items?{query.replace(',', '%2C')} HTTP/1.1".encode())


async def test_a_long_download_reaches_a_fast_and_a_slow_client_byte_for_byte(serve: Serve) -> None:
    """The proxy process (on uvloop, whose writes keep a reference to what they could not send yet)
    reads a long body into buffers it reuses once the client's socket has taken everything written:
    a client that reads slowly keeps them in use, one that reads fast lets them be reused."""
    body = hashlib.shake_256(b"download").digest(8 * 1024 * 1024)  # no repeating pattern

    async def download(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            for start in range(0, len(body), 50_000):
                await conn.send(body[start : start + 50_000])

    upstream = await serve(download)
    proxy = await spawn("--listen", "127.0.0.1:0", "--upstream", upstream.url, "--sign-host",
                        "x.execute-api.us-east-1.amazonaws.com", env=isolated_env(CREDENTIALS))
    try:
        for read_size, pause in ((1 << 20, 0.0), (16 * 1024, 0.001)):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            received = bytearray()
            await asyncio.sleep(pause * 300)  # the slow one: the socket buffers fill up first
            async with asyncio.timeout(20):
                while data := await reader.read(read_size):
                    received += data
                    await asyncio.sleep(pause)
            writer.close()
            head, _, got = bytes(received).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and len(got) == len(body)
            assert got == body, f"first difference at byte {next(i for i, (a, b) in enumerate(zip(got, body)) if a != b)}"
    finally:
        await proxy.stop()


def proxy_memory_kib(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as status:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in status) if k in ("VmRSS", "VmHWM")}


async def test_a_slow_client_holds_a_few_buffers_not_the_body(serve: Serve) -> None:
    """A client that reads slowly keeps the proxy's writes unfinished, so its read buffers are never
    all free at once: each one must still go as soon as its views are sent, or memory grows with
    the body (it did: ~150 MiB for a 100 MiB download)."""
    body = hashlib.shake_256(b"slow").digest(32 * 1024 * 1024)

    async def download(conn: Conn) -> None:
        await conn.request()
        await conn.send(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        await conn.send(body)

    upstream = await serve(download)
    proxy = await spawn("--listen", "127.0.0.1:0", "--upstream", upstream.url, "--sign-host",
                        "x.execute-api.us-east-1.amazonaws.com", env=isolated_env(CREDENTIALS))
    try:
        before = proxy_memory_kib(proxy.process.pid)["VmRSS"]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: writes stay unfinished
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        digest, size = hashlib.sha256(), 0
        head = await reader.readuntil(b"\r\n\r\n")
        async with asyncio.timeout(30):
            while data := await reader.read(16 * 1024):
                digest.update(data)
                size += len(data)
                await asyncio.sleep(0.0002)
        writer.close()
        assert head.startswith(b"HTTP/1.1 200") and size == len(body)
        assert digest.digest() == hashlib.sha256(body).digest()
        grown = proxy_memory_kib(proxy.process.pid)["VmHWM"] - before
        assert grown < 10 * 1024, f"the proxy's peak RSS grew by {grown} KiB for a {len(body) >> 20} MiB download"
    finally:
        await proxy.stop()
