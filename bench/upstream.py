"""The benchmark's aiohttp upstream: timed server-sent events always, everything else without nginx.

nginx cannot emit events on a timer, so /events lives here (nginx proxies to it unbuffered). When
nginx is absent this server also stands in for it: the same paths, served as cheaply as aiohttp
can (a prebuilt small body, sendfile for the large file, the POST body read and dropped).

    python -m bench.upstream PORT WWW_DIR
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from aiohttp import web

CHUNK = 256 * 1024


def make_app(www: Path) -> web.Application:
    small = (www / "small.json").read_bytes()

    async def small_json(_request: web.Request) -> web.Response:
        return web.Response(body=small, content_type="application/json")

    async def big(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(www / "big.bin", chunk_size=CHUNK)

    async def upload(request: web.Request) -> web.Response:
        while await request.content.read(CHUNK):
            pass
        return web.Response(text='{"ok":true}\n', content_type="application/json")

    async def events(request: web.Request) -> web.StreamResponse:
        """`count` events `interval_ms` apart, each carrying its send time (CLOCK_MONOTONIC, ns).

        CLOCK_MONOTONIC is one clock for every process on the host, so the client can subtract.
        """
        count = int(request.query.get("count", "50"))
        interval = float(request.query.get("interval_ms", "20")) / 1000
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(b": start\n\n")
        for i in range(count):
            await asyncio.sleep(interval)
            await response.write(f"id: {i}\ndata: {time.monotonic_ns()}\n\n".encode())
        await response.write_eof()
        return response

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/small.json", small_json)
    app.router.add_get("/big.bin", big)
    app.router.add_post("/upload", upload)
    app.router.add_get("/events", events)
    return app


def main() -> None:
    port, www = int(sys.argv[1]), Path(sys.argv[2])
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(www), host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
