"""Bad input and broken upstreams: a JSON error with a one-line reason and the right status, never
a traceback, never a hung connection, and the proxy keeps serving."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from aiohttp import web

from conftest import Stack, StackFactory
from proxy.config import Settings, resolve_routes
from proxy.credentials import CredentialsUnavailable, StaticCredentialSource
from proxy.server import start_proxy
from proxy.signing import Credentials
from rawhttp import raw_request


async def still_serving(stack: Stack, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{stack.url}/prod/items") as resp:
        assert resp.status == 200


def assert_json_error(body: bytes, error: str) -> dict:
    payload = json.loads(body)
    assert set(payload) == {"error", "detail"} and payload["error"] == error, payload
    assert "\n" not in payload["detail"] and "Traceback" not in payload["detail"]
    return payload


async def test_upstream_unreachable_is_502_naming_it(client: aiohttp.ClientSession) -> None:
    settings = Settings(listen="127.0.0.1:0", upstream="http://127.0.0.1:9", sign_host="x.execute-api.us-east-1.amazonaws.com")
    proxy = await start_proxy(settings, resolve_routes(settings), lambda _r: StaticCredentialSource(Credentials("AK", "SK")))
    try:
        async with client.get(f"http://127.0.0.1:{proxy.port}/prod/x") as resp:
            assert resp.status == 502
            detail = assert_json_error(await resp.read(), "upstream unreachable")["detail"]
        assert "127.0.0.1:9" in detail
    finally:
        await proxy.close(0.1)


async def test_declared_body_over_limit_is_413_before_reading(make_stack: StackFactory) -> None:
    stack = await make_stack(settings={"max_body_size": 1000})
    request = (
        b"POST /prod/fn HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )  # the body is never sent: the proxy must answer without waiting for it (no 100 Continue)
    response = await raw_request(stack.proxy.port, request, timeout=5)
    assert response.status == 413
    assert_json_error(response.body, "request body too large")
    assert stack.gateway.seen == []


async def test_chunked_body_over_limit_is_413(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    stack = await make_stack(settings={"max_body_size": 100_000})

    async def chunks():
        for _ in range(10):
            yield b"x" * 20_000

    async with client.post(f"{stack.url}/prod/fn", data=chunks()) as resp:
        assert resp.status == 413
        assert_json_error(await resp.read(), "request body too large")
    assert stack.gateway.seen == []
    await still_serving(stack, client)


async def test_malformed_chunked_body_is_400(stack: Stack, client: aiohttp.ClientSession) -> None:
    request = (
        b"POST /prod/fn HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nnot hex\r\n0\r\n\r\n"
    )
    response = await raw_request(stack.proxy.port, request, timeout=5)
    assert response.status == 400
    assert stack.gateway.seen == []
    await still_serving(stack, client)


async def test_absolute_form_target_never_changes_the_upstream(stack: Stack) -> None:
    request = b"GET http://169.254.169.254/latest/meta-data HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n"
    response = await raw_request(stack.proxy.port, request, timeout=5)
    assert response.status == 400
    assert_json_error(response.body, "absolute-form target refused")
    assert stack.gateway.seen == []


class _Unavailable(StaticCredentialSource):
    """A source whose credentials are gone (e.g. an SSO session that ended)."""

    def __init__(self) -> None:
        super().__init__(Credentials("AK", "SK"), "broken")

    async def get(self) -> Credentials:
        raise CredentialsUnavailable("credentials for route / unavailable (sso token expired): run `aws sso login --profile dev`")


async def test_credentials_unavailable_is_503_saying_what_to_do(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    stack = await make_stack(credentials=_Unavailable())
    async with client.get(f"{stack.url}/prod/items") as resp:
        assert resp.status == 503
        detail = assert_json_error(await resp.read(), "credentials unavailable")["detail"]
    assert "aws sso login" in detail
    assert stack.gateway.seen == []


class _Buggy:
    """An addon with a bug: the proxy must answer 500 JSON, log the traceback, keep serving."""

    calls = 0

    async def on_request(self, request: web.BaseRequest) -> web.StreamResponse | None:
        self.calls += 1
        if self.calls == 1:
            raise KeyError("bug")
        return None

    def on_response(self, request: web.BaseRequest, headers) -> None:
        return None


async def test_a_bug_costs_one_request_a_json_500(make_stack: StackFactory, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    stack = await make_stack(addons=(_Buggy(),))
    async with client.get(f"{stack.url}/prod/items") as resp:
        assert resp.status == 500
        assert_json_error(await resp.read(), "internal error")
    assert "Traceback" in caplog.text or "KeyError" in caplog.text
    await still_serving(stack, client)


async def test_upstream_403_passes_through_unchanged(stack: Stack, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{stack.url}/prod/status?code=403") as resp:
        assert resp.status == 403
        assert await resp.json() == {"status": 403}


@pytest.mark.parametrize(
    ("request_bytes", "leak", "reason"),
    [
        (b"GET /prod/x HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer TOPSECRET\x01TOKEN\r\n\r\n", b"TOPSECRET",
         "Invalid header value char"),
        (b"GET /prod/x HTTP/1.1\r\n\r\n", None, "Missing 'Host' header in request."),
        (b"POST /prod/x?t=RAWLEAK HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
         b"RAWLEAK", "Duplicate Content-Length"),
        (b"POST /prod/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", None,
         "Content-Length can't be present with Transfer-Encoding"),
    ],
)
async def test_unparseable_requests_get_json_400_with_the_parsers_reason_and_leak_nothing(
    stack: Stack, caplog: pytest.LogCaptureFixture, request_bytes: bytes, leak: bytes | None, reason: str
) -> None:
    response = await raw_request(stack.proxy.port, request_bytes, timeout=5)
    assert response.status == 400
    detail = assert_json_error(response.body, "malformed request")["detail"]
    assert detail == f"the HTTP request could not be parsed: {reason}"
    assert f"refused a malformed request from 127.0.0.1: {reason}" in caplog.text and "Traceback" not in caplog.text
    if leak is not None:
        assert leak.decode() not in caplog.text and leak not in response.body
    assert stack.gateway.seen == []


@pytest.mark.parametrize(
    ("request_bytes", "status", "error"),
    [
        (b"GET /prod/x?q=" + b"TOKENLEAK" * 1900 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414, "URI too long"),
        (b"GET /prod/x HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + b"TOKENLEAK" * 1200 + b"\r\n\r\n",
         431, "request header too large"),
        (b"GET /prod/x HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-Leak-%d: TOKENLEAK\r\n" % i for i in range(129))
         + b"\r\n", 431, "request header too large"),
        (b"GET /prod/x?api_key=TOKENLEAK HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", 505, "HTTP version not supported"),
        (b"GET /prod/x?api_key=TOKENLEAK\r\n\r\n", 505, "HTTP version not supported"),  # HTTP/0.9: no headers at all
        (b"GET /prod/x?api_key=TOKENLEAK HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 505, "HTTP version not supported"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "HTTP version not supported"),  # HTTP/2's preface
        (b"GARBAGE-TOKENLEAK\r\n\r\n", 400, "malformed request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03TOKENLEAK", 400, "TLS on a plain-HTTP port"),
        (b"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Leak: TOKENLEAK\r\n\r\n", 400, "asterisk-form target refused"),
    ],
    ids=["request-line", "header-field", "header-count", "http-9.9", "http-0.9", "http-2.0", "h2-preface",
         "not-a-request-line", "tls-hello", "asterisk-form"],
)
async def test_a_request_head_refused_for_what_it_is_gets_its_own_status_and_leaks_nothing(
    stack: Stack, caplog: pytest.LogCaptureFixture, request_bytes: bytes, status: int, error: str
) -> None:
    response = await raw_request(stack.proxy.port, request_bytes, timeout=5)
    assert response.status == status
    assert_json_error(response.body, error)
    assert error in caplog.text and "Traceback" not in caplog.text
    assert "TOKENLEAK" not in caplog.text and b"TOKENLEAK" not in response.body
    assert stack.gateway.seen == []


async def test_garbage_from_the_upstream_is_a_one_line_502(client: aiohttp.ClientSession) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"xxxx not http\r\nsecond line\r\n\r\n")
        await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    settings = Settings(listen="127.0.0.1:0", upstream=f"http://127.0.0.1:{port}", sign_host="x.execute-api.us-east-1.amazonaws.com")
    proxy = await start_proxy(settings, resolve_routes(settings), lambda _r: StaticCredentialSource(Credentials("AK", "SK")))
    try:
        async with client.get(f"http://127.0.0.1:{proxy.port}/prod/x") as resp:
            assert resp.status == 502
            detail = assert_json_error(await resp.read(), "upstream failed")["detail"]
        assert "second line" not in detail and len(detail) < 300
    finally:
        await proxy.close(0.1)
        upstream.close()


@pytest.mark.parametrize("method", [b"FOO", b"BREW"])
async def test_unknown_method_is_a_json_501(stack: Stack, method: bytes) -> None:
    """A method llhttp does not know is not a malformed request: 501 (RFC 9110 15.6.2)."""
    response = await raw_request(stack.proxy.port, method + b" /prod/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", timeout=5)
    assert response.status == 501
    assert_json_error(response.body, "method not implemented")
    assert stack.gateway.seen == []


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET http://user:PASSLEAK@evil.example/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET https://PASSLEAK@evil.example/x://again HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"CONNECT user:PASSLEAK@evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    ],
)
async def test_a_password_in_a_refused_target_is_not_logged(
    stack: Stack, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    caplog.set_level(logging.INFO, "sigv4_proxy.access")
    response = await raw_request(stack.proxy.port, request_bytes, timeout=5)
    assert response.status in (400, 405)
    await asyncio.sleep(0.05)  # the access line is written once the answer is on its way
    assert "<redacted>@evil.example" in caplog.text and "PASSLEAK" not in caplog.text
    assert stack.gateway.seen == []


async def test_a_malformed_chunk_in_a_later_read_is_a_prompt_400_that_leaks_nothing(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await make_stack(settings={"idle_timeout": 30})
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.proxy.port)
    try:
        writer.write(b"POST /prod/u HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)  # the handler is reading the body by now
        writer.write(b"ZZSECRET\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)  # answered and closed, not held for --idle-timeout
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body) == {"error": "malformed request body",
                                "detail": "the body could not be parsed: Invalid character in chunk size"}
    assert "ZZSECRET" not in caplog.text
    assert stack.gateway.seen == []


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (b"GET /prod/items HTTP/1.1\nHost: 127.0.0.1\n\n", "Bad status line: Expected CRLF after version"),
        (b"GET /prod/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\n",
         "Request has invalid `Transfer-Encoding`"),
    ],
)
async def test_multi_line_parser_reasons_are_given_too(stack: Stack, request_bytes: bytes, reason: str) -> None:
    response = await raw_request(stack.proxy.port, request_bytes, timeout=5)
    assert response.status == 400
    assert response.json()["detail"] == f"the HTTP request could not be parsed: {reason}"
