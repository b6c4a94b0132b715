"""Each way a CloudFront + API Gateway setup refuses a signature, through the real stack: the
upstream's 403 passes unchanged and X-Sigv4-Proxy-Diagnosis names the cause."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from conftest import CREDENTIALS, SIGN_HOST, StackFactory
from proxy.credentials import StaticCredentialSource
from proxy.diagnose import DIAGNOSIS_HEADER
from proxy.fake_aws import Key
from proxy.signing import Credentials

TEMPORARY = Credentials("ASIATESTTEMPORARYKEY", "temporary-secret-0123456789abcdef", "FwoGZXIvYXdzEXAMPLETOKEN+/=")


async def refused(make_stack: StackFactory, client: aiohttp.ClientSession, path: str = "/prod/items",
                  headers: dict[str, str] | None = None, **stack: Any) -> tuple[str, dict[str, Any], aiohttp.ClientResponse]:
    built = await make_stack(**stack)
    async with client.get(built.url.with_path(path, encoded=True) if "?" not in path else f"{built.url}{path}",
                          headers=headers or {}) as resp:
        body = await resp.read()
        assert resp.status == 403, body
        assert resp.headers["Content-Length"] == str(len(body))
        diagnosis = resp.headers.get(DIAGNOSIS_HEADER, "")
        return diagnosis, json.loads(body), resp


async def test_viewer_host_forwarded(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    diagnosis, body, resp = await refused(make_stack, client, cloudfront={"forward_viewer_host": True})
    assert diagnosis.startswith("viewer-host-forwarded:"), diagnosis
    assert "AllViewerExceptHostHeader" in diagnosis and SIGN_HOST in diagnosis
    # The upstream's answer passes unchanged: its type header and API Gateway's own message.
    assert resp.headers["x-amzn-ErrorType"] == "InvalidSignatureException"
    assert "The Canonical String for this request should have been" in body["message"]


async def test_wrong_sign_host(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    other = "zzz999.execute-api.ap-northeast-1.amazonaws.com"
    diagnosis, _, _ = await refused(make_stack, client, settings={"sign_host": other})
    assert diagnosis.startswith("wrong-sign-host:"), diagnosis
    assert f"set --sign-host {SIGN_HOST}" in diagnosis and other in diagnosis


async def test_origin_path_missing_from_signed_path(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    diagnosis, _, _ = await refused(make_stack, client, path="/items", cloudfront={"origin_path": "/prod"})
    assert diagnosis.startswith("origin-path:"), diagnosis
    assert "origin path /prod" in diagnosis and "--origin-path /prod" in diagnosis


async def test_query_not_forwarded(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    diagnosis, _, _ = await refused(make_stack, client, path="/prod/items?limit=10", cloudfront={"drop_query": True})
    assert diagnosis.startswith("query-not-forwarded:"), diagnosis
    assert "limit=10" in diagnosis


async def test_signed_header_changed_in_transit(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    diagnosis, _, _ = await refused(make_stack, client, headers={"Accept-Encoding": "gzip, deflate, br"},
                                    settings={"signed_headers": ["accept-encoding"]})
    assert diagnosis.startswith("header-changed:"), diagnosis
    assert "accept-encoding" in diagnosis and "'gzip, deflate, br' -> 'gzip'" in diagnosis


async def test_authorization_not_forwarded(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    diagnosis, body, _ = await refused(make_stack, client, cloudfront={"drop_headers": ("Authorization",)})
    assert body == {"message": "Missing Authentication Token"}
    assert diagnosis.startswith("missing-authentication-token:"), diagnosis
    assert "forward Authorization" in diagnosis and "no resource or stage" in diagnosis


async def test_date_not_forwarded(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    diagnosis, _, _ = await refused(make_stack, client, cloudfront={"drop_headers": ("X-Amz-Date",)})
    assert diagnosis.startswith("incomplete-signature:"), diagnosis
    assert "X-Amz-Date" in diagnosis


@pytest.mark.parametrize("offset, words", [(timedelta(hours=2), "behind"), (timedelta(minutes=-20), "ahead of")])
async def test_clock_skew_is_measured(make_stack: StackFactory, client: aiohttp.ClientSession,
                                      offset: timedelta, words: str) -> None:
    built = await make_stack()
    built.gateway.clock_offset = offset
    async with client.get(built.url / "prod" / "items") as resp:
        assert resp.status == 403
        diagnosis = resp.headers[DIAGNOSIS_HEADER]
    assert diagnosis.startswith("clock-skew:"), diagnosis
    seconds = abs(offset.total_seconds())
    hours, minutes = int(seconds // 3600), int(seconds % 3600 // 60)
    span = f"{hours} h" if hours else f"{minutes} min"
    assert f"the local clock is {span}" in diagnosis and f"{words} AWS's clock" in diagnosis


async def test_wrong_region(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    diagnosis, _, _ = await refused(make_stack, client, settings={"region": "us-west-2"})
    assert diagnosis.startswith("wrong-region:"), diagnosis
    assert "'us-west-2'" in diagnosis and "set --region ap-northeast-1" in diagnosis


async def test_wrong_service(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    diagnosis, _, _ = await refused(make_stack, client, settings={"service": "lambda"})
    assert diagnosis.startswith("wrong-service:"), diagnosis
    assert "--service execute-api" in diagnosis


async def test_expired_token(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    expired = Key(TEMPORARY, expires=datetime.now(timezone.utc) - timedelta(minutes=1))
    diagnosis, _, _ = await refused(make_stack, client, keys={TEMPORARY.access_key: expired},
                                    credentials=StaticCredentialSource(TEMPORARY))
    assert diagnosis.startswith("expired-security-token:"), diagnosis


async def test_invalid_token(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    wrong = Credentials(TEMPORARY.access_key, TEMPORARY.secret_key, "not-the-session-token")
    diagnosis, _, _ = await refused(make_stack, client, keys={TEMPORARY.access_key: Key(TEMPORARY)},
                                    credentials=StaticCredentialSource(wrong))
    assert diagnosis.startswith("invalid-security-token:"), diagnosis
    assert "X-Amz-Security-Token" in diagnosis


async def test_wrong_secret_key(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    wrong = Credentials(CREDENTIALS.access_key, "not-the-secret-key")
    diagnosis, _, _ = await refused(make_stack, client, credentials=StaticCredentialSource(wrong))
    assert diagnosis.startswith("secret-key-mismatch:"), diagnosis


async def test_iam_deny_names_the_arn(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    built = await make_stack()
    built.gateway.denied_keys.add(CREDENTIALS.access_key)
    async with client.post(built.url / "prod" / "orders" / "7", data=b"{}") as resp:
        assert resp.status == 403
        body = await resp.json()
        diagnosis = resp.headers[DIAGNOSIS_HEADER]
    resource = "arn:aws:execute-api:ap-northeast-1:123456789012:abc123/prod/POST/orders/7"
    assert resource in body["Message"]
    assert diagnosis.startswith("iam-denied:"), diagnosis
    assert f"execute-api:Invoke on {resource}" in diagnosis
    assert "arn:aws:sts::123456789012:assumed-role/sigv4-proxy-test/" in diagnosis


async def test_application_403_is_left_alone(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    built = await make_stack()
    async with client.get(built.url / "prod" / "status", params={"code": "403"}) as resp:
        assert resp.status == 403
        assert await resp.read() == b'{"status": 403}'
        assert DIAGNOSIS_HEADER not in resp.headers


async def test_large_403_body_streams_through_whole(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    big = bytes(range(256)) * 1024  # 256 KiB: more than the 64 KiB the diagnosis reads

    async def huge_refusal(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        return web.Response(status=403, body=big, headers={"x-amzn-ErrorType": "AccessDeniedException"})

    built = await make_stack(handler=huge_refusal)
    async with client.get(built.url / "prod" / "x") as resp:
        assert resp.status == 403
        assert await resp.read() == big
        assert resp.headers[DIAGNOSIS_HEADER].startswith("aws-refused: AWS refused the request: AccessDeniedException")


async def test_trickling_403_is_not_held_back(make_stack: StackFactory, client: aiohttp.ClientSession,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.observe.REFUSAL_READ_WAIT", 0.3)  # the 2 s default, shortened

    async def trickle(request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(status=403, headers={"x-amzn-ErrorType": "AccessDeniedException"})
        await response.prepare(request)
        await response.write(b'{"message": "User: anonymous is not authorized')
        await asyncio.sleep(1.5)
        await response.write(b' ..."}')
        await response.write_eof()
        return response

    built = await make_stack(handler=trickle)
    started = asyncio.get_running_loop().time()
    async with client.get(built.url / "prod" / "x") as resp:
        waited = asyncio.get_running_loop().time() - started
        assert resp.status == 403 and DIAGNOSIS_HEADER in resp.headers
        assert waited < 1.2  # headers after the read window, not after the 1.5 s body
        assert await resp.read() == b'{"message": "User: anonymous is not authorized ..."}'
