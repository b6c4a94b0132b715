"""Every log line of a busy run (debug-signing on, DEBUG level, text and JSON formats, refusals
and failures included), every error body and every diagnosis header, grepped for the secrets used."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from datetime import timedelta

import aiohttp
import pytest

from conftest import SIGN_HOST, StackFactory
from proxy.check import run_check
from proxy.config import Settings
from proxy.credentials import StaticCredentialSource
from proxy.diagnose import DIAGNOSIS_HEADER
from proxy.fake_aws import Key
from proxy.logs import TEXT_FORMAT, JsonFormatter
from proxy.signing import Credentials

TEMPORARY = Credentials("ASIASECRETSTESTKEY01", "secrets-test-secret-key-0123456789", "secrets-test-session-token-abcdef")
CLIENT_SECRETS = {
    "Authorization": "Bearer client-bearer-secret-value",
    "X-Amz-Security-Token": "client-stale-token-value",
}
# Presigned-URL parameters only go to a dead upstream (AWS, and awscrt, refuse a request that
# carries both them and an Authorization header); the other credential-like ones reach the gateway.
PRESIGN_SECRETS = {"X-Amz-Credential": "AKIDQUERYCREDENTIAL/20261203/x", "X-Amz-Signature": "a1b2c3d4e5f60718293a4b5c6d7e8f90"}
QUERY_SECRETS = {"access_token": "query-access-token-value", "api_key": "query-api-key-value"}


@pytest.fixture
def all_logs() -> Iterator[io.StringIO]:
    captured = io.StringIO()
    handlers = [logging.StreamHandler(captured), logging.StreamHandler(captured)]
    handlers[0].setFormatter(logging.Formatter(TEXT_FORMAT))
    handlers[1].setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    yield captured
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(level)


async def test_no_secret_in_any_log_line_or_error(make_stack: StackFactory, all_logs: io.StringIO) -> None:
    keys = {TEMPORARY.access_key: Key(TEMPORARY)}
    source = StaticCredentialSource(TEMPORARY)
    wrong_host = {"prefix": "/wrong", "sign_host": "zzz999.execute-api.ap-northeast-1.amazonaws.com"}
    dead = {"prefix": "/dead", "upstream": "http://127.0.0.1:9", "sign_host": SIGN_HOST}
    main = await make_stack(keys=keys, credentials=source, settings={"debug_signing": True, "max_body_size": 4096})
    main_settings = {"debug_signing": True, "routes": [{**wrong_host, "upstream": str(main.cloudfront_url)}, dead]}
    routed = await make_stack(keys=keys, credentials=source, settings=main_settings)
    no_date = await make_stack(keys=keys, credentials=source, settings={"debug_signing": True},
                               cloudfront={"drop_headers": ("X-Amz-Date",)})
    bad_token = await make_stack(keys=keys, settings={"debug_signing": True},
                                 credentials=StaticCredentialSource(Credentials(TEMPORARY.access_key, TEMPORARY.secret_key, "wrong-token-value")))
    exposed: list[str] = []  # what the proxy itself wrote to clients: error bodies and diagnosis headers
    statuses: list[int] = []
    async with aiohttp.ClientSession() as client:
        async def call(base: object, path: str, method: str = "GET", data: bytes | None = None) -> None:
            params = PRESIGN_SECRETS if path.startswith("/dead") else QUERY_SECRETS
            query = "&".join(f"{k}={v}" for k, v in params.items())
            async with client.request(method, f"{base}{path}?{query}&limit=5", headers=CLIENT_SECRETS, data=data) as resp:
                body = await resp.text()
                statuses.append(resp.status)
                exposed.append(resp.headers.get(DIAGNOSIS_HEADER, ""))
                if resp.status >= 400 and "x-amzn-ErrorType" not in resp.headers:
                    exposed.append(body)  # the proxy's own errors (upstream 403 bodies are AWS's, passed on)

        for n in range(20):
            await call(main.url, f"/prod/items/{n}")
            await call(main.url, "/prod/fn", "POST", b'{"userId": 1}')
        await call(main.url, "/prod/big", "PUT", b"x" * 5000)  # 413
        await call(routed.url, "/wrong/items")  # signature mismatch: AWS quotes the canonical request
        await call(routed.url, "/dead/items")  # 502
        await call(no_date.url, "/prod/items")  # AWS echoes part of the Authorization header
        await call(bad_token.url, "/prod/items")
        main.gateway.clock_offset = timedelta(hours=1)
        await call(main.url, "/prod/items")
        main.gateway.clock_offset = timedelta(0)
        main.gateway.denied_keys.add(TEMPORARY.access_key)
        await call(main.url, "/prod/items")
        await call(main.url, "/__sigv4proxy/health")
        await call(main.url, "/__sigv4proxy/metrics")

    lines: list[str] = []
    await run_check(Settings(upstream=str(routed.cloudfront_url), sign_host="zzz.execute-api.ap-northeast-1.amazonaws.com",
                             debug_signing=True), "/prod/x?access_token=" + QUERY_SECRETS["access_token"],
                    lambda _r: source, lines.append)
    await run_check(Settings(upstream="http://127.0.0.1:9", sign_host=SIGN_HOST, debug_signing=True),
                    "/prod/x?X-Amz-Signature=" + PRESIGN_SECRETS["X-Amz-Signature"], lambda _r: source, lines.append)
    assert "X-Amz-Signature" not in all_logs.getvalue()  # a presigned URL's auth never gets signed

    assert statuses.count(200) == 42 and statuses.count(403) == 5 and {413, 502} <= set(statuses), statuses
    signatures = {re.search(r"Signature=(\w+)", h[1]).group(1)  # type: ignore[union-attr]
                  for seen in main.gateway.seen for h in seen["headers"] if h[0].lower() == "authorization"}  # type: ignore[union-attr]
    assert len(signatures) >= 20  # GET paths differ; identical POSTs in one second sign alike
    logs = all_logs.getvalue()
    assert "canonical request:" in logs and "x-amz-security-token:<redacted>" in logs  # debug-signing ran
    assert "AWS's canonical request" in logs and "wrong-sign-host" in logs  # the diagnosis ran
    assert logs.count('"logger": "sigv4_proxy.access"') >= 48  # JSON access lines
    secrets = [TEMPORARY.secret_key, TEMPORARY.token, TEMPORARY.access_key, "wrong-token-value",
               *CLIENT_SECRETS.values(), *QUERY_SECRETS.values(), *PRESIGN_SECRETS.values(), *signatures]
    for text in (logs, "\n".join(exposed), "\n".join(lines)):
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked"
