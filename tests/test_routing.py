"""Routes, upstream paths, hop-by-hop headers and connection reuse, through the real stack."""

from __future__ import annotations

import json

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from conftest import SIGN_HOST, Stack, StackFactory
from proxy.headers import client_response_headers, upstream_request_headers
from rawhttp import get, raw_request


async def test_hop_by_hop_request_headers_never_cross(stack: Stack) -> None:
    request = (
        b"GET /prod/items HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close, X-Private\r\nX-Private: secret-hop\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Foo: 1\r\nX-Kept: yes\r\n\r\n"
    )
    response = await raw_request(stack.proxy.port, request)
    assert response.status == 200
    names = {n.lower() for n, _ in json.loads(response.body)["headers"]}
    assert names.isdisjoint({"x-private", "keep-alive", "te", "upgrade", "proxy-connection", "proxy-authorization", "proxy-foo"})
    assert "x-kept" in names


def test_hop_by_hop_response_headers_never_cross() -> None:
    upstream = CIMultiDictProxy(CIMultiDict([
        ("Connection", "X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"),
        ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Encoding", "gzip"),
    ]))
    assert list(client_response_headers(upstream).items()) == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Encoding", "gzip")]


def test_listed_amz_headers_are_kept_but_signer_owned_ones_never() -> None:
    client = CIMultiDictProxy(CIMultiDict([("X-Amz-Target", "DynamoDB_20120810.GetItem"), ("X-Amz-Date", "x"), ("X-Amz-Meta-A", "1")]))
    kept = upstream_request_headers(client, ("x-amz-target", "x-amz-date"))
    assert list(kept.items()) == [("X-Amz-Target", "DynamoDB_20120810.GetItem")]


async def test_connections_to_the_upstream_are_reused(stack: Stack, client: aiohttp.ClientSession) -> None:
    for _ in range(5):
        async with client.get(f"{stack.url}/prod/items") as resp:
            assert resp.status == 200
    assert len(stack.cloudfront.connections) == 1


async def test_upstream_url_path_is_sent_and_signed(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    stack = await make_stack()
    settings_stack = await make_stack(settings={"upstream": f"{stack.cloudfront_url}/api"})
    async with client.get(f"{settings_stack.url}/items?a=1") as resp:
        assert resp.status == 200
        assert (await resp.json())["raw_path"] == "/api/items"


async def test_longest_prefix_wins_and_strip_prefix(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    search = await make_stack()  # a second CloudFront + gateway pair, reached through a route
    stack = await make_stack(settings={"routes": [
        {"prefix": "/search", "upstream": str(search.cloudfront_url), "sign_host": SIGN_HOST, "strip_prefix": True},
        {"prefix": "/search/raw", "upstream": str(search.cloudfront_url), "sign_host": SIGN_HOST},
    ]})
    async with client.get(f"{stack.url}/search/_cat/indices") as resp:
        assert (await resp.json())["raw_path"] == "/_cat/indices"
    async with client.get(f"{stack.url}/search/raw/x") as resp:
        assert (await resp.json())["raw_path"] == "/search/raw/x"
    async with client.get(f"{stack.url}/searchable") as resp:  # not under /search: the "/" route
        assert (await resp.json())["raw_path"] == "/searchable"
    escaped = await raw_request(stack.proxy.port, get(b"/search/../prod/x"))  # normalized before routing
    assert json.loads(escaped.body)["raw_path"] == "/prod/x"
    assert [s["raw_path"] for s in search.gateway.seen] == ["/_cat/indices", "/search/raw/x"]
    assert [s["raw_path"] for s in stack.gateway.seen] == ["/searchable", "/prod/x"]


async def test_client_connections_without_a_request_under_way_are_closed(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that never sends a request, one stuck inside its request head, and one idle
    after its answer are all closed by the proxy after CLIENT_IDLE_TIMEOUT (a local program must
    not be able to hold the proxy's sockets forever)."""
    import asyncio

    import proxy.server

    monkeypatch.setattr(proxy.server, "CLIENT_IDLE_TIMEOUT", 0.5)
    stack = await make_stack()
    port = stack.proxy.port
    silent = await asyncio.open_connection("127.0.0.1", port)
    partial = await asyncio.open_connection("127.0.0.1", port)
    partial[1].write(b"GET /prod/items HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    idle = await asyncio.open_connection("127.0.0.1", port)
    idle[1].write(get(b"/prod/items"))
    answer = await asyncio.wait_for(idle[0].readuntil(b"\r\n\r\n"), 5)
    assert answer.startswith(b"HTTP/1.1 200")
    started = asyncio.get_running_loop().time()
    for reader, _ in (silent, partial):
        assert await asyncio.wait_for(reader.read(), 5) == b""  # EOF: the proxy closed it
    await asyncio.wait_for(idle[0].read(), 5)  # the rest of the answer, then EOF
    assert asyncio.get_running_loop().time() - started < 3
    for _, writer in (silent, partial, idle):
        writer.close()
