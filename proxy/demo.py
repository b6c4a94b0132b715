"""`sigv4-proxy demo`: the proxy in front of a local CloudFront + API Gateway, no AWS account.

The demo upstream verifies every signature with awscrt, so a request that reaches its echo
answer really was signed correctly for the API Gateway host while travelling via "CloudFront".
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

import aiohttp
from aiohttp import web

from proxy.config import Route, Settings, resolve_routes
from proxy.credentials import StaticCredentialSource
from proxy.fake_aws import FakeApiGateway, FakeCloudFront, Key, describe_request, listen
from proxy.server import serve_until_signalled, start_proxy
from proxy.signing import Credentials

log = logging.getLogger("sigv4_proxy")

DEMO_CREDENTIALS = Credentials("AKIDSIGV4PROXYDEMO", "sigv4-proxy-demo-secret-not-a-real-key")
DEMO_SIGN_HOST = "demo123abc.execute-api.us-east-1.amazonaws.com"


async def demo_origin(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
    """Echo what arrived, or a short server-sent event stream under .../events."""
    if not request.path.endswith("/events"):
        return web.json_response({"verified": True, "received": describe_request(request, body)})
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    if request.method == "HEAD":
        return web.Response(headers=headers)  # the stream's headers, never its body (RFC 9110 9.3.2)
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    for n in range(1, 6):
        await response.write(f"id: {n}\ndata: event {n} of 5\n\n".encode())
        await asyncio.sleep(0.5)
    await response.write_eof()
    return response


async def start_demo_upstream(stack: AsyncExitStack) -> str:
    """Start API Gateway and CloudFront stand-ins on 127.0.0.1; return CloudFront's URL."""
    gateway = FakeApiGateway({DEMO_CREDENTIALS.access_key: Key(DEMO_CREDENTIALS)}, "us-east-1", handler=demo_origin)
    origin = await listen(gateway.handle)
    stack.push_async_callback(origin.close)
    session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
    stack.push_async_callback(session.close)
    cloudfront = await listen(FakeCloudFront(origin.url, DEMO_SIGN_HOST, session).handle)
    stack.push_async_callback(cloudfront.close)
    return str(cloudfront.url)


async def run_demo(settings: Settings) -> int:
    ignored = [f"--{name.replace('_', '-')}" for name in ("upstream", "sign_host", "region", "service", "profile",
                                                           "role_arn", "origin_path") if getattr(settings, name)]
    if ignored or settings.routes:
        log.warning("demo: ignoring %s: the demo has its own upstream, routes and keys",
                    ", ".join(ignored + (["routes"] if settings.routes else [])))
    async with AsyncExitStack() as stack:
        upstream = await start_demo_upstream(stack)
        settings = settings.model_copy(update={"upstream": upstream, "sign_host": DEMO_SIGN_HOST, "routes": []})
        routes: list[Route] = resolve_routes(settings)
        proxy = await start_proxy(settings, routes, lambda _r: StaticCredentialSource(DEMO_CREDENTIALS, "demo keys"))
        # Bound to every interface (as in the container image), the proxy is reached via loopback.
        host = "127.0.0.1" if proxy.host in ("0.0.0.0", "::") else proxy.host
        base = f"http://{host}:{proxy.port}"
        print(
            "\nsigv4-proxy demo is running: a local CloudFront + API Gateway that verifies every signature.\n"
            "Try, in another terminal:\n"
            f"  curl -s '{base}/prod/items?limit=10&q=caf%C3%A9'\n"
            f"  curl -s -X POST -H 'Content-Type: application/json' -d '{{\"userId\":1}}' {base}/prod/fn\n"
            f"  curl -sN {base}/prod/events\n"
            "Each JSON answer shows what the origin received; \"verified\": true means the signature held.\n"
            "Ctrl-C stops it.\n",
            flush=True,
        )
        await serve_until_signalled(proxy, settings.shutdown_grace)
    return 0
