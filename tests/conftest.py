"""Real servers on 127.0.0.1: a verifying API Gateway stand-in (awscrt), a CloudFront-like hop
that rewrites Host, and the proxy itself, wired as a user would wire them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from yarl import URL

from origin import origin
from proxy.config import Settings, resolve_routes
from proxy.credentials import CredentialSource, StaticCredentialSource
from proxy.fake_aws import FakeApiGateway, FakeCloudFront, Handler, Key, Listening, listen
from proxy.forward import Addon
from proxy.server import RunningProxy, start_proxy
from proxy.signing import Credentials
from proxy_process import OUTBOUND_PROXY_VARIABLES

pytest_plugins = ("secret_watch",)  # every test's log is grepped for secrets (issue 4)
SIGN_HOST = "abc123.execute-api.ap-northeast-1.amazonaws.com"
REGION = "ap-northeast-1"
CREDENTIALS = Credentials("AKIDTESTSTATICKEY", "test-secret-key-static-0123456789")


@dataclass
class Stack:
    """client -> proxy -> CloudFront stand-in -> verifying API Gateway stand-in -> origin."""

    proxy: RunningProxy
    gateway: FakeApiGateway
    cloudfront: FakeCloudFront
    cloudfront_url: URL
    gateway_url: URL

    @property
    def url(self) -> URL:
        return URL(f"http://127.0.0.1:{self.proxy.port}")


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture(autouse=True)
def no_outbound_proxy_from_the_callers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY and the like in the shell that runs the suite must not decide where in-process
    proxies send requests: the tests that want an outbound proxy set it themselves."""
    for name in OUTBOUND_PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
async def make_stack() -> AsyncIterator[StackFactory]:
    closers: list[Callable[[], Awaitable[Any]]] = []

    async def factory(
        *,
        handler: Handler | None = origin,
        settings: dict[str, Any] | None = None,
        cloudfront: dict[str, Any] | None = None,
        keys: dict[str, Key] | None = None,
        credentials: CredentialSource | None = None,
        addons: tuple[Addon, ...] = (),
    ) -> Stack:
        # `keys` is used as given (even empty): credential tests register what their issuers hand out.
        keys = {CREDENTIALS.access_key: Key(CREDENTIALS)} if keys is None else keys
        gateway = FakeApiGateway(keys, REGION, handler=handler)
        gateway_server: Listening = await listen(gateway.handle)
        closers.append(gateway_server.close)
        session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
        closers.append(session.close)
        hop = FakeCloudFront(gateway_server.url, SIGN_HOST, session, **(cloudfront or {}))
        hop_server = await listen(hop.handle)
        closers.append(hop_server.close)
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "upstream": str(hop_server.url),
            "sign_host": SIGN_HOST,
            **(settings or {}),
        }
        config = Settings(**values)
        source = credentials or StaticCredentialSource(CREDENTIALS)
        proxy = await start_proxy(config, resolve_routes(config), lambda _route: source, addons)
        closers.append(lambda: proxy.close(1.0))
        return Stack(proxy, gateway, hop, hop_server.url, gateway_server.url)

    yield factory
    for close in reversed(closers):
        await close()


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session
