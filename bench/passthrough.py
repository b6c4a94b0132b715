"""The baseline: the simplest unsigned aiohttp reverse proxy, the figure the issue compares against.

An aiohttp web app and one ClientSession; the request body streams up, the response streams back.
No signing, no canonical form, no body hashing, no routing. It gets the same cheap defaults a
careful minimal proxy would have (uvloop, C HTTP parser, keep-alive pool, no decompression), so
the comparison measures what the real proxy's work costs, not a handicapped baseline.

    python -m bench.passthrough --listen 127.0.0.1:PORT --upstream http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

# RFC 9110 section 7.6.1, and Host/Content-Length which belong to each hop.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
     "host", "content-length"}
)


def make_app(upstream: str) -> web.Application:
    app = web.Application()

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
        )

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with app["session"].request(
            request.method,
            upstream + request.raw_path,
            headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        ) as upstream_response:
            response = web.StreamResponse(
                status=upstream_response.status,
                headers={k: v for k, v in upstream_response.headers.items() if k.lower() not in HOP_BY_HOP},
            )
            await response.prepare(request)
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream", required=True, metavar="URL")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(args.upstream.rstrip("/")), host=host, port=int(port), access_log=None, print=None)


if __name__ == "__main__":
    main()
