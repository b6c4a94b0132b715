"""The proxy's server side reads a client's socket at most READ_SIZE bytes at a time, on asyncio's
loop and on uvloop (which the proxy runs on), and every byte still arrives in order: both body
framings, and a request pipelined behind them.

Without a buffered protocol both loops read up to 256 KiB at once, and aiohttp buffers a read whole
before it pauses the socket: that cost ten concurrent 5 MiB uploads ~3 MiB of the proxy's peak RSS.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable

import pytest
import uvloop
from aiohttp import web

from proxy.http_server import READ_SIZE, ProxyServer

BODY = bytes(range(256)) * (8 * 1024)  # 2 MiB: many reads, whatever the socket buffers hold
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


async def echo_digest(request: web.BaseRequest) -> web.Response:
    """The body's hash and the largest piece the server handed over (one per read for a
    Content-Length body; aiohttp joins a chunked body's pieces up to the end of each chunk). It
    starts late, so the client's bytes pile up in the socket and an unbounded read takes a lot."""
    await asyncio.sleep(0.05)
    digest, largest, size = hashlib.sha256(), 0, 0
    # Not for a request without a body: aiohttp shares one empty body between all of them, and
    # iter_chunks() on it ends only the first time (the next test's GET would spin forever).
    if request.body_exists:
        async for chunk, _ in request.content.iter_chunks():
            digest.update(chunk)
            largest = max(largest, len(chunk))
            size += len(chunk)
    return web.json_response(
        {"path": request.path, "sha256": digest.hexdigest(), "size": size, "largest": largest}
    )


def chunked(body: bytes, size: int) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


async def converse() -> list[dict[str, object]]:
    server = await asyncio.get_running_loop().create_server(ProxyServer(echo_digest), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = b"POST /%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        writer.write(
            head % b"length" + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
            + head % b"chunked" + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(BODY, 1024 * 1024)
            + b"GET /after HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        answers = []
        for _ in range(3):
            response_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert response_head.startswith(b"HTTP/1.1 200 ")
            length = next(
                int(line.split(b":")[1]) for line in response_head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            answers.append(json.loads(await reader.readexactly(length)))
        writer.close()
        return answers
    finally:
        server.close()


@pytest.mark.parametrize("loop_factory", LOOPS.values(), ids=LOOPS.keys())
def test_reads_are_bounded_and_bodies_intact(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        answers = runner.run(converse())
    digest = hashlib.sha256(BODY).hexdigest()
    assert [(a["path"], a["size"], a["sha256"]) for a in answers] == [
        ("/length", len(BODY), digest), ("/chunked", len(BODY), digest), ("/after", 0, hashlib.sha256().hexdigest()),
    ]
    assert 0 < answers[0]["largest"] <= READ_SIZE
