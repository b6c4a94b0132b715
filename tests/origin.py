"""What the test origin (behind the verifying API Gateway stand-in) answers, by path."""

from __future__ import annotations

import asyncio
import gzip
import json

from aiohttp import web

from proxy.fake_aws import describe_request

CHUNK = 64 * 1024
# Streams whose client went away: the proxy must cancel the upstream request, not leave it running.
CANCELLED: list[str] = []


def pattern(size: int) -> bytes:
    """Deterministic bytes, so a test can check every byte it streamed."""
    block = bytes(range(256)) * (CHUNK // 256)
    return (block * (size // CHUNK + 1))[:size]


async def origin(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
    name = request.path.rstrip("/").rsplit("/", 1)[-1]
    query = request.query
    if name == "download":
        size = int(query.get("size", "0"))
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if query.get("chunked") != "1":
            response.content_length = size
        await response.prepare(request)
        block = pattern(CHUNK)
        sent = 0
        while sent < size:
            piece = block[: min(CHUNK, size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response
    if name == "events":
        count, interval = int(query.get("count", "3")), float(query.get("interval", "0.2"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            for n in range(count):
                if n:
                    await asyncio.sleep(interval)
                stamp = asyncio.get_running_loop().time()
                await response.write(f"id: {n}\ndata: {stamp}\n\n".encode())
        except asyncio.CancelledError:
            CANCELLED.append(request.raw_path)
            raise
        await response.write_eof()
        return response
    if name == "gzip":
        payload = gzip.compress(json.dumps({"compressed": True, "pad": "x" * 2000}).encode())
        return web.Response(body=payload, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    if name == "redirect":
        return web.Response(status=302, headers={"Location": "/stage/new"})
    if name == "cookies":
        response = web.Response(text="cookies")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
        return response
    if name == "sized":
        if request.method == "HEAD":  # headers only, as a real origin answers HEAD
            return web.Response(headers={"Content-Length": "1234"})
        return web.Response(body=b"x" * 1234)
    if name == "slow":
        await asyncio.sleep(float(query.get("delay", "1")))
        return web.json_response({"slept": True})
    if name == "status":
        return web.json_response({"status": int(query["code"])}, status=int(query["code"]))
    return web.json_response(describe_request(request, body))
