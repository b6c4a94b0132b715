"""Responses stream: events one by one, no total deadline, big downloads in flat memory, headers
and bytes passed through untouched, and a client that hangs up cancels the upstream request."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp
import pytest

import origin
from conftest import CREDENTIALS, SIGN_HOST, Stack, StackFactory
from proxy_process import isolated_env, spawn


async def test_sse_events_arrive_one_by_one(stack: Stack, client: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    lags = []
    async with client.get(f"{stack.url}/prod/events?count=5&interval=0.3", headers={"Accept": "text/event-stream"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        headers_at = loop.time()
        async for line in resp.content:
            if line.startswith(b"data: "):
                lags.append(loop.time() - float(line[6:]))
    assert len(lags) == 5
    assert max(lags) < 0.1, lags  # each event within ~100 ms of being sent, not at the end
    assert headers_at < loop.time() - 1.0  # headers came long before the stream ended


async def test_client_disconnect_cancels_upstream(stack: Stack, client: aiohttp.ClientSession) -> None:
    origin.CANCELLED.clear()
    resp = await client.get(f"{stack.url}/prod/events?count=100&interval=0.2")
    assert (await resp.content.readline()).startswith(b"id: 0")
    resp.close()  # hang up mid-stream
    for _ in range(50):
        if origin.CANCELLED:
            break
        await asyncio.sleep(0.05)
    assert origin.CANCELLED == ["/prod/events?count=100&interval=0.2"]


async def test_slow_first_byte_within_timeout_and_long_stream_beyond_it(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    stack = await make_stack(settings={"timeout": 1.0})
    async with client.get(f"{stack.url}/prod/slow?delay=0.6") as resp:
        assert resp.status == 200
    async with client.get(f"{stack.url}/prod/events?count=6&interval=0.4") as resp:
        body = await resp.read()  # 2 s of streaming, twice --timeout: no total deadline
    assert body.count(b"data: ") == 6


async def test_no_headers_within_timeout_is_504(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    stack = await make_stack(settings={"timeout": 0.3})
    async with client.get(f"{stack.url}/prod/slow?delay=2") as resp:
        assert resp.status == 504
        error = await resp.json()
    assert error["error"] == "upstream timeout" and "--timeout" in error["detail"]
    async with client.get(f"{stack.url}/prod/items") as resp:  # still serving
        assert resp.status == 200


async def test_idle_stream_is_cut_after_idle_timeout(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    stack = await make_stack(settings={"idle_timeout": 0.5})
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(f"{stack.url}/prod/events?count=3&interval=1.5") as resp:
            assert resp.status == 200
            await resp.read()  # truncated, never a clean end: the client can tell


async def test_several_set_cookie_headers_pass(stack: Stack, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{stack.url}/prod/cookies") as resp:
        assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]


async def test_chunked_response_stays_intact(stack: Stack, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{stack.url}/prod/download?size=3000000&chunked=1") as resp:
        assert resp.status == 200
        assert "Content-Length" not in resp.headers
        assert await resp.read() == origin.pattern(3_000_000)


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(300)
async def test_200_mib_download_with_curl_keeps_proxy_memory_flat(stack: Stack) -> None:
    """A real proxy process, a real curl: 200 MiB pass while the proxy's peak RSS stays < 100 MB."""
    proxy = await spawn("--listen", "127.0.0.1:0", "--upstream", str(stack.cloudfront_url), "--sign-host", SIGN_HOST,
                        env=isolated_env(CREDENTIALS))
    try:
        size = 200 * 1024 * 1024
        curl = await asyncio.create_subprocess_exec(
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
            f"{proxy.url}/prod/download?size={size}", stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await curl.communicate()
        assert out.decode() == f"200 {size}"
        assert peak_rss_kib(proxy.process.pid) < 100 * 1000, f"peak RSS {peak_rss_kib(proxy.process.pid)} KiB"
    finally:
        await proxy.stop()


@pytest.mark.timeout(120)
async def test_b3_large_uploads_spill_to_disk_and_memory_stays_flat(stack: Stack) -> None:
    """Eight 5 MiB uploads at once through a real proxy process: its peak RSS grows by far less
    than the 40 MiB in flight, because bodies go to a temporary file, not memory."""
    proxy = await spawn("--listen", "127.0.0.1:0", "--upstream", str(stack.cloudfront_url), "--sign-host", SIGN_HOST,
                        env=isolated_env(CREDENTIALS))
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(proxy.url / "prod" / "warm-up") as resp:
                assert resp.status == 200
            before = peak_rss_kib(proxy.process.pid)
            body = bytes(range(256)) * (5 * 4096)

            async def upload(n: int) -> str:
                async with client.put(proxy.url / "prod" / "blob" / str(n), data=body) as resp:
                    assert resp.status == 200
                    return (await resp.json())["body_sha256"]

            hashes = await asyncio.gather(*(upload(n) for n in range(8)))
        assert set(hashes) == {hashlib.sha256(body).hexdigest()}
        growth = peak_rss_kib(proxy.process.pid) - before
        assert growth < 16 * 1024, f"peak RSS grew by {growth} KiB for 40 MiB of uploads"
    finally:
        await proxy.stop()


async def test_request_body_that_stalls_is_a_408_and_one_that_trickles_is_forwarded(make_stack: StackFactory) -> None:
    """--idle-timeout also bounds silence inside a request body: a client that stops mid-body gets
    a JSON 408 saying the connection closes (aiohttp then lingers up to 10 s for the rest before
    closing); one that keeps sending, however slowly, gets through."""
    from rawhttp import parse_response, read_response

    stack = await make_stack(settings={"idle_timeout": 0.5})
    head = b"POST /prod/items HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.proxy.port)
    writer.write(head + b"x" * 10)
    started = asyncio.get_running_loop().time()
    stalled = parse_response(await asyncio.wait_for(read_response(reader), 5))
    assert asyncio.get_running_loop().time() - started < 2
    assert stalled.status == 408 and stalled.json()["error"] == "request body stalled"
    assert stalled.headers["Connection"] == "close"
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", stack.proxy.port)
    writer.write(head)
    for _ in range(10):  # 1000 bytes over ~2 s, never silent for 0.5 s
        writer.write(b"y" * 100)
        await asyncio.sleep(0.2)
    trickled = parse_response(await asyncio.wait_for(read_response(reader), 5))
    assert trickled.status == 200, trickled.body
    assert trickled.json()["body_sha256"] == hashlib.sha256(b"y" * 1000).hexdigest()
    writer.close()
