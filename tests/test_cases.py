"""Every entry of ../shared/cases/user-reports.md, replayed through the real stack: the request
must verify (awscrt, behind a Host-rewriting CloudFront hop) and the origin must receive the same
resource and the same decoded parameters the client meant."""

from __future__ import annotations

import asyncio
import hashlib
import json

import aiohttp
import pytest

from conftest import Stack
from proxy import canonical
from rawhttp import get, parse_response, raw_request, read_response


async def through(stack: Stack, target: bytes, *headers: str) -> dict:
    response = await raw_request(stack.proxy.port, get(target, *headers))
    assert response.status == 200, response.body
    return json.loads(response.body)


# (case, raw client target, raw path the origin gets, canonical URI AWS computes, decoded path)
PATH_CASES = [
    ("P1", b"/stage/objects/key_$folder$", "/stage/objects/key_$folder$", "/stage/objects/key_%24folder%24", None),
    ("P1", b"/stage/x(1)!*", "/stage/x(1)!*", "/stage/x%281%29%21%2A", None),
    ("P1", b"/stage/mac@2x.png", "/stage/mac@2x.png", "/stage/mac%402x.png", None),
    ("P2", b"/stage/users/eu-central-1:abc/info", "/stage/users/eu-central-1:abc/info",
     "/stage/users/eu-central-1%3Aabc/info", None),
    ("P2", b"/stage/users/eu-central-1%3Aabc/info", "/stage/users/eu-central-1%3Aabc/info",
     "/stage/users/eu-central-1%253Aabc/info", "/stage/users/eu-central-1:abc/info"),
    ("P3", b"/stage/cars/Citro%C3%ABn", "/stage/cars/Citro%C3%ABn", "/stage/cars/Citro%25C3%25ABn", "/stage/cars/Citroën"),
    ("P3", "/stage/cars/Citroën".encode(), "/stage/cars/Citro%C3%ABn", "/stage/cars/Citro%25C3%25ABn", "/stage/cars/Citroën"),
    ("P3", b"/stage/this%20path", "/stage/this%20path", "/stage/this%2520path", "/stage/this path"),
    ("P4", b"/stage/items/a%2Fb", "/stage/items/a%2Fb", "/stage/items/a%252Fb", "/stage/items/a/b"),
    ("P5", b"/stage//a/./b/../c/", "/stage/a/c/", "/stage/a/c/", None),
]


@pytest.mark.parametrize(("case", "target", "raw_path", "uri", "decoded"), PATH_CASES)
async def test_path_cases(stack: Stack, case: str, target: bytes, raw_path: str, uri: str, decoded: str | None) -> None:
    seen = await through(stack, target)
    assert seen["raw_path"] == raw_path
    assert seen["path"] == (decoded or raw_path)
    assert canonical.canonical_uri(seen["raw_path"]) == uri


async def test_p1_head_returns_headers_only(stack: Stack, client: aiohttp.ClientSession) -> None:
    async with client.head(f"{stack.url}/stage/objects/key_$folder$") as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    assert stack.gateway.seen[-1]["method"] == "HEAD"


# (case, raw query, decoded params the origin must get, canonical query AWS computes)
QUERY_CASES = [
    ("Q1", b"token=abc%3D", [["token", "abc="]], "token=abc%3D"),
    ("Q2", b'q=para:meter&ids=[{"id":"x"}]', [["q", "para:meter"], ["ids", '[{"id":"x"}]']],
     "ids=%5B%7B%22id%22%3A%22x%22%7D%5D&q=para%3Ameter"),
    ("Q3", b"v&b=", [["v", ""], ["b", ""]], "b=&v="),
    ("Q5", b"a=2&a=10&a=1&param[10]=1&param[2]=1",
     [["a", "2"], ["a", "10"], ["a", "1"], ["param[10]", "1"], ["param[2]", "1"]],
     "a=1&a=10&a=2&param%5B10%5D=1&param%5B2%5D=1"),
    ("Q6", b"q=a+b&r=C%2B%2B&s=a%20b", [["q", "a b"], ["r", "C++"], ["s", "a b"]], "q=a%20b&r=C%2B%2B&s=a%20b"),
]


@pytest.mark.parametrize(("case", "query", "params", "canon"), QUERY_CASES)
async def test_query_cases(stack: Stack, case: str, query: bytes, params: list, canon: str) -> None:
    seen = await through(stack, b"/stage/items?" + query)
    assert seen["params"] == params
    assert "+" not in seen["raw_query"]
    assert canonical.canonical_query(canonical.wire_query(seen["raw_query"], plus_is_space=False)) == canon


async def test_q4_post_with_query(stack: Stack, client: aiohttp.ClientSession) -> None:
    async with client.post(f"{stack.url}/stage/search?sort=_doc&size=50", data=b"{}") as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert seen["params"] == [["sort", "_doc"], ["size", "50"]]
    assert canonical.canonical_query(canonical.wire_query(seen["raw_query"])) == "size=50&sort=_doc"
    assert seen["body_sha256"] == hashlib.sha256(b"{}").hexdigest()


async def test_q7_client_escapes_are_not_requoted(stack: Stack) -> None:
    seen = await through(stack, b"/stage/a%3Ab/x?q=a%2Fb&r=%3d")
    assert f"{seen['raw_path']}?{seen['raw_query']}" == "/stage/a%3Ab/x?q=a%2Fb&r=%3D"
    assert canonical.canonical_uri(seen["raw_path"]) == "/stage/a%253Ab/x"
    assert canonical.canonical_query(canonical.wire_query(seen["raw_query"])) == "q=a%2Fb&r=%3D"
    assert seen["params"] == [["q", "a/b"], ["r", "="]]


def received(seen: dict, name: str) -> list[str]:
    return [v for n, v in seen["headers"] if n.lower() == name]


async def test_h1_headers_cloudfront_rewrites_still_verify(stack: Stack, client: aiohttp.ClientSession) -> None:
    headers = {
        "Accept": "application/json, text/event-stream",
        "Accept-Encoding": "gzip, deflate, br",
        "Accept-Language": "en-US",
        "Content-Type": "application/json",
    }
    async with client.post(f"{stack.url}/stage/mcp", data=b"{}", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        seen = await resp.json()
    assert received(seen, "accept-encoding") == ["gzip"]  # rewritten in transit, yet it verified
    assert received(seen, "accept-language") == ["en-US"]
    assert received(seen, "content-type") == ["application/json"]


async def test_h2_client_auth_headers_never_reach_upstream(stack: Stack, client: aiohttp.ClientSession) -> None:
    headers = {
        "Authorization": "Bearer client-token",
        "X-Amz-Date": "20200101T000000Z",
        "X-Amz-Security-Token": "old-token",
        "Date": "Mon, 01 Jan 2020 00:00:00 GMT",
    }
    async with client.get(f"{stack.url}/stage/items", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        seen = await resp.json()
    assert received(seen, "authorization")[0].startswith("AWS4-HMAC-SHA256 Credential=")
    assert received(seen, "x-amz-date") != ["20200101T000000Z"] and len(received(seen, "x-amz-date")) == 1
    assert received(seen, "x-amz-security-token") == []  # static keys: no token at all
    assert received(seen, "date") == []
    assert "client-token" not in json.dumps(seen) and "old-token" not in json.dumps(seen)


async def test_b1_payload_hash_is_of_the_forwarded_bytes(stack: Stack, client: aiohttp.ClientSession) -> None:
    body = b'{"userId":1}'
    async with client.post(f"{stack.url}/stage/fn", data=body, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert (seen["body_sha256"], seen["body_length"]) == (hashlib.sha256(body).hexdigest(), len(body))


async def test_b2_chunked_upload_without_content_length(stack: Stack) -> None:
    chunks = [b"a" * 100, b"b" * 120, b"c" * 80]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    request = (
        b"POST /stage/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + framed
    )
    response = await raw_request(stack.proxy.port, request)
    assert response.status == 200, response.body
    seen = json.loads(response.body)
    assert seen["body_length"] == 300
    assert seen["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert received(seen, "transfer-encoding") == []


async def test_b3_five_mib_put_under_the_cap(stack: Stack, client: aiohttp.ClientSession) -> None:
    body = bytes(range(256)) * (5 * 4096)
    async with client.put(f"{stack.url}/stage/blob", data=body, headers={"Content-Type": "application/octet-stream"}) as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    # Spilled to disk and streamed from there, yet sent with its length, not chunked.
    assert received(seen, "content-length") == [str(len(body))] and received(seen, "transfer-encoding") == []


async def test_b4_compressed_bytes_pass_untouched(stack: Stack, client: aiohttp.ClientSession) -> None:
    async with aiohttp.ClientSession(auto_decompress=False) as direct:
        async with direct.get(f"{stack.gateway_url}/stage/gzip") as resp:
            assert resp.status == 403  # unsigned straight to the gateway: refused
    async with client.get(f"{stack.url}/stage/report/gzip", headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Encoding"] == "gzip"
        raw = await resp.read()
        assert int(resp.headers["Content-Length"]) == len(raw)
    import gzip

    assert json.loads(gzip.decompress(raw))["compressed"] is True


async def test_r3_redirects_are_returned_not_followed(stack: Stack, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{stack.url}/stage/redirect", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/stage/new"
    assert [s["raw_path"] for s in stack.gateway.seen] == ["/stage/redirect"]


async def test_r4_head_keeps_content_length(stack: Stack) -> None:
    request = b"HEAD /stage/items/sized HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    response = await raw_request(stack.proxy.port, request, timeout=3)
    assert response.status == 200
    assert response.header("Content-Length") == "1234"
    assert response.body == b""


async def test_o1_root_is_proxied_like_any_path(stack: Stack, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{stack.url}/") as resp:
        assert resp.status == 200
        assert (await resp.json())["raw_path"] == "/"


async def test_cloudfront_origin_path_is_signed_but_not_sent(make_stack) -> None:
    """CloudFront prepends its origin path (/prod): the proxy signs /prod/items, sends /items."""
    stack = await make_stack(cloudfront={"origin_path": "/prod"}, settings={"origin_path": "/prod/"})
    seen = await through(stack, b"/items?x=1")
    assert seen["raw_path"] == "/prod/items"
    unsigned = await make_stack(cloudfront={"origin_path": "/prod"})
    response = await raw_request(unsigned.proxy.port, get(b"/items"))
    assert response.status == 403 and b"signature we calculated does not match" in response.body


async def test_presigned_query_auth_is_replaced_by_the_header_signature(stack: Stack) -> None:
    seen = await through(
        stack,
        b"/stage/items?a=1&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDOLD%2F20200101%2Fus-east-1"
        b"%2Fexecute-api%2Faws4_request&X-Amz-Signature=" + b"0" * 64 + b"&x-amz-meta=kept",
    )
    assert seen["params"] == [["a", "1"], ["x-amz-meta", "kept"]]


async def test_p3_raw_utf8_target_later_on_a_keep_alive_connection(stack: Stack) -> None:
    """The fast C parser refuses raw UTF-8; the connection falls back to the lenient parser mid-way."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.proxy.port)
    try:
        for target in (b"/stage/cars/plain", "/stage/cars/Citroën".encode(), b"/stage/cars/after"):
            writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            response = parse_response(await read_response(reader))
            assert response.status == 200, response.body
            assert json.loads(response.body)["path"] == target.decode()
    finally:
        writer.close()


async def test_a_long_query_the_proxy_accepts_reaches_the_verifying_upstream(stack: Stack) -> None:
    # 12 KiB of query: over aiohttp's default 8190-byte request line, under the proxy's 16 KiB; the
    # CloudFront and API Gateway stand-ins must take it too (the demo showed a traceback instead).
    query = "&".join(f"k{i}=" + "v" * 40 for i in range(280))
    response = await raw_request(stack.proxy.port, f"GET /stage/long?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode(), timeout=10)
    assert response.status == 200, response.body[:300]
    seen = json.loads(response.body)
    assert len(seen["params"]) == 280
