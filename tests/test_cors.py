"""CORS as a front-end on another local port sees it, through the real stack."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from conftest import StackFactory
from proxy.cors import append_vary
from proxy.fake_aws import describe_request

FRONT = "http://localhost:3000"


async def upstream_with_its_own_cors(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
    """An API that already answers CORS its own way (wide open): the proxy's answer must win."""
    response = web.json_response(describe_request(request, body))
    response.headers.update(
        {
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Expose-Headers": "x-upstream-secret",
            "Access-Control-Max-Age": "86400",
            "Vary": "Accept-Encoding",
            "X-Request-Id": "r-1",
        }
    )
    return response


def preflight_headers(origin: str = FRONT, method: str = "PUT", names: str = "content-type, x-trace-id") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": names}


async def test_preflight_is_answered_by_the_proxy(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    stack = await make_stack(settings={"cors_origins": [FRONT], "cors_max_age": 120})
    async with client.options(stack.url / "prod" / "items", headers=preflight_headers()) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == FRONT
        assert resp.headers["Access-Control-Allow-Methods"] == "PUT"
        assert resp.headers["Access-Control-Allow-Headers"] == "content-type, x-trace-id"
        assert resp.headers["Access-Control-Max-Age"] == "120"
        assert "Access-Control-Allow-Credentials" not in resp.headers
        assert "Origin" in resp.headers["Vary"]
    assert stack.gateway.seen == []  # neither signed nor forwarded


async def test_preflight_from_an_unlisted_origin_is_refused(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    stack = await make_stack(settings={"cors_origins": [FRONT]})
    async with client.options(stack.url / "prod" / "items", headers=preflight_headers("http://localhost:4000")) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "cross-origin request refused"
        assert "Access-Control-Allow-Origin" not in resp.headers
    assert stack.gateway.seen == []


async def test_plain_options_is_forwarded(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    stack = await make_stack(settings={"cors_origins": [FRONT]})
    async with client.options(stack.url / "prod" / "items") as resp:
        assert resp.status == 200
    assert [s["method"] for s in stack.gateway.seen] == ["OPTIONS"]


async def test_malformed_preflight_is_a_json_400(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    stack = await make_stack(settings={"cors_origins": [FRONT]})
    async with client.options(stack.url / "prod" / "x", headers=preflight_headers(method="PU T")) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "malformed preflight"


@pytest.mark.parametrize("credentials", [False, True])
async def test_proxy_cors_headers_replace_the_upstreams(
    make_stack: StackFactory, client: aiohttp.ClientSession, credentials: bool
) -> None:
    stack = await make_stack(
        handler=upstream_with_its_own_cors,
        settings={
            "cors_origins": [FRONT],
            "cors_expose_headers": ["X-Request-Id"],
            "cors_allow_credentials": credentials,
        },
    )
    async with client.get(stack.url / "prod" / "items", headers={"Origin": FRONT}) as resp:
        assert resp.status == 200
        headers = resp.headers
    assert headers.getall("Access-Control-Allow-Origin") == [FRONT]
    assert headers.getall("Access-Control-Expose-Headers") == ["X-Request-Id, X-Sigv4-Proxy-Diagnosis"]
    assert headers.getall("Access-Control-Allow-Credentials", []) == (["true"] if credentials else [])
    assert "Access-Control-Max-Age" not in headers  # the upstream's, meaningless on a response
    assert headers.getall("Vary") == ["Accept-Encoding, Origin"]
    assert headers["X-Request-Id"] == "r-1"


async def test_no_origin_gets_no_cors_but_a_vary(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    stack = await make_stack(handler=upstream_with_its_own_cors, settings={"cors_origins": [FRONT]})
    async with client.get(stack.url / "prod" / "items") as resp:
        assert resp.status == 200
        assert not [n for n in resp.headers if n.lower().startswith("access-control-")]
        assert resp.headers.getall("Vary") == ["Accept-Encoding, Origin"]  # a cache must not reuse it for a front-end


async def test_without_cors_origins_upstream_cors_never_reaches_a_browser(
    make_stack: StackFactory, client: aiohttp.ClientSession
) -> None:
    stack = await make_stack(handler=upstream_with_its_own_cors)
    async with client.get(stack.url / "prod" / "items") as resp:
        assert resp.status == 200
        assert not [n for n in resp.headers if n.lower().startswith("access-control-")]
        assert resp.headers.getall("Vary") == ["Accept-Encoding"]


async def test_errors_are_readable_by_the_front_end(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    """A listed front-end can read why it failed (here: no client token), and its preflight needs none."""
    stack = await make_stack(settings={"cors_origins": [FRONT], "client_token": "t0ken-for-the-front-end"})
    url = stack.url / "prod" / "items"
    async with client.options(url, headers=preflight_headers(names="x-proxy-token")) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Headers"] == "x-proxy-token"
    async with client.put(url, headers={"Origin": FRONT}, json={}) as resp:
        assert resp.status == 401
        assert resp.headers["Access-Control-Allow-Origin"] == FRONT
        assert (await resp.json())["error"] == "client token required"
    headers = {"Origin": FRONT, "X-Proxy-Token": "t0ken-for-the-front-end"}
    async with client.put(url, headers=headers, json={}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == FRONT
    assert [s["method"] for s in stack.gateway.seen] == ["PUT"]


async def test_private_network_preflight(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    """Chrome asks before an https page on the internet may call loopback; a listed one may."""
    stack = await make_stack(settings={"cors_origins": ["https://app.example.com"]})
    headers = {**preflight_headers("https://app.example.com"), "Access-Control-Request-Private-Network": "true"}
    async with client.options(stack.url / "prod" / "items", headers=headers) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Private-Network"] == "true"


@pytest.mark.parametrize(
    "before, after",
    [
        ([], ["Origin"]),
        (["Accept-Encoding"], ["Accept-Encoding, Origin"]),
        (["Accept-Encoding, origin"], ["Accept-Encoding, origin"]),
        (["Accept-Encoding", "Accept-Language"], ["Accept-Encoding, Accept-Language, Origin"]),
        (["*"], ["*"]),
    ],
)
def test_append_vary(before: list[str], after: list[str]) -> None:
    headers: CIMultiDict[str] = CIMultiDict([("Vary", v) for v in before])
    append_vary(headers, "Origin")
    assert headers.getall("Vary") == after
