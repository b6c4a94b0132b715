"""Every other source a user has, through the real chain: the container endpoint, IMDS,
credential_process, the credentials file edited while running; endpoints that are down or hang;
credentials expired with a failing source (503) and the recovery without a restart."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import time
from datetime import datetime

import aiohttp
import botocore.credentials
import pytest

from conftest import SIGN_HOST, Stack, StackFactory
from credential_servers import (  # noqa: F401 (aws_env, endpoints, hanging_port: fixtures)
    AwsFiles, Issuer, SsoPortal, StartEndpoint, aws_env, closed_port, endpoints, hanging_port, route_for,
    seconds_until, sso_login, timed_get,
)
from proxy.credentials import ChainCredentialSource, CredentialsUnavailable
from proxy.fake_aws import Key
from proxy.signing import Credentials


async def get_until_past(client: aiohttp.ClientSession, stack: Stack, moment: datetime, extra: float = 0.7) -> list[tuple]:
    """Requests every 100 ms until `extra` seconds after `moment` (a credential set's expiry)."""
    results = []
    deadline = time.monotonic() + seconds_until(moment) + extra
    while time.monotonic() < deadline:
        results.append(await timed_get(client, stack))
        await asyncio.sleep(0.1)
    return results


def switched_before(results: list[tuple], first: Credentials, expiry: datetime) -> float:
    """Seconds before `expiry` that the first request signed with another set was sent."""
    switch = next(wall for _, _, _, key, wall in results if key and key != first.access_key)
    return (expiry - switch).total_seconds()


async def test_container_endpoint_credentials_are_refreshed_before_they_expire(
    aws_env: AwsFiles, endpoints: StartEndpoint, monkeypatch: pytest.MonkeyPatch, make_stack: StackFactory, client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys: dict[str, Key] = {}
    issuer = Issuer(keys, lifetime=3.0)
    endpoint = await endpoints(issuer.container)
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{endpoint.url}/v2/credentials")
    source = ChainCredentialSource(route_for())
    stack = await make_stack(keys=keys, credentials=source)
    assert source.describe().startswith("container endpoint, expires ")
    first, expiry = issuer.issued[0]
    results = await get_until_past(client, stack, expiry)
    assert {r[2] for r in results} == {200}
    assert switched_before(results, first, expiry) > 0.3
    assert "retrying" not in caplog.text  # renewed ahead of time, not rescued by a 403


async def test_container_endpoint_refusing_fails_at_once(aws_env: AwsFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    await assert_container_endpoint_fails_fast(monkeypatch, closed_port())


async def test_container_endpoint_hanging_fails_in_seconds(
    aws_env: AwsFiles, monkeypatch: pytest.MonkeyPatch, hanging_port: int
) -> None:
    await assert_container_endpoint_fails_fast(monkeypatch, hanging_port)


async def assert_container_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{port}/v2/credentials")
    started = time.monotonic()
    with pytest.raises(CredentialsUnavailable) as caught:
        await ChainCredentialSource(route_for()).start()
    assert time.monotonic() - started < 3.0  # botocore's own limits: up to 8 s
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "check the container credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI" in message


async def test_imds_credentials_expired_early_are_rescued_by_one_shared_refresh_and_retry(
    aws_env: AwsFiles, endpoints: StartEndpoint, monkeypatch: pytest.MonkeyPatch, make_stack: StackFactory, client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """botocore stretches IMDS credentials that expire within ~15 min (its static stability), so the
    proxy keeps the set until the upstream says ExpiredTokenException: then one refresh, one retry."""
    keys: dict[str, Key] = {}
    issuer = Issuer(keys, lifetime=2.0)
    imds = await endpoints(issuer.imds)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"{imds.url}/")
    source = ChainCredentialSource(route_for())
    stack = await make_stack(keys=keys, credentials=source)
    assert source.describe().startswith("imds, expires ")
    first, expiry = issuer.issued[0]
    assert (await timed_get(client, stack))[2] == 200
    await asyncio.sleep(seconds_until(expiry) + 0.2)
    fetches = issuer.fetches
    caplog.set_level(logging.INFO)
    batch = await asyncio.gather(*(timed_get(client, stack) for _ in range(10)))
    assert [r[2] for r in batch] == [200] * 10
    assert {r[3] for r in batch} == {issuer.issued[-1][0].access_key} != {first.access_key}
    assert issuer.fetches - fetches == 1  # ten rejected requests shared one refresh
    assert "upstream says ExpiredTokenException; credentials refreshed, retrying once" in caplog.text


async def test_missing_imds_fails_in_seconds_naming_what_was_tried(
    aws_env: AwsFiles, monkeypatch: pytest.MonkeyPatch, hanging_port: int
) -> None:
    port = hanging_port
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{port}/")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # as inside a pod
    started = time.monotonic()
    with pytest.raises(CredentialsUnavailable) as caught:
        await ChainCredentialSource(route_for()).start()
    assert time.monotonic() - started < 5.0
    message = str(caught.value)
    for tried in ("environment variables", f"profile default in {aws_env.config}", "container endpoint",
                  f"imds at http://127.0.0.1:{port}/ (no credentials within 1s x 1 attempt(s))",
                  "--http-put-response-hop-limit 2"):
        assert tried in message, (tried, message)


async def test_credential_process_with_expiring_credentials(
    aws_env: AwsFiles, endpoints: StartEndpoint, make_stack: StackFactory, client: aiohttp.ClientSession,
) -> None:
    keys: dict[str, Key] = {}
    issuer = Issuer(keys, lifetime=3.0)
    helper_url = await endpoints(issuer.process)
    helper = aws_env.home / "helper.py"
    helper.write_text("import sys, urllib.request\nsys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())\n")
    aws_env.config.write_text(f"[profile dev]\ncredential_process = {sys.executable} {helper} {helper_url.url}/\n")
    source = ChainCredentialSource(route_for(profile="dev"))
    stack = await make_stack(keys=keys, credentials=source)
    assert source.describe().startswith("profile dev (credential_process), expires ")
    first, expiry = issuer.issued[0]
    results = await get_until_past(client, stack, expiry)
    assert {r[2] for r in results} == {200}
    assert len(issuer.issued) >= 2
    assert switched_before(results, first, expiry) > 0.3


KEY_1 = Credentials("AKIDFILEKEY00001", "file-secret-number-one")
KEY_2 = Credentials("AKIDFILEKEY000002", "file-secret-number-two-rotated")


def credentials_file(creds: Credentials) -> str:
    return f"[default]\naws_access_key_id = {creds.access_key}\naws_secret_access_key = {creds.secret_key}\n"


async def test_credentials_file_edited_while_running_is_picked_up(
    aws_env: AwsFiles, make_stack: StackFactory, client: aiohttp.ClientSession,
) -> None:
    aws_env.credentials.write_text(credentials_file(KEY_1))
    keys = {KEY_1.access_key: Key(KEY_1), KEY_2.access_key: Key(KEY_2)}
    source = ChainCredentialSource(route_for(), recheck_interval=0.1)
    stack = await make_stack(keys=keys, credentials=source)
    assert source.describe() == "credentials file"
    assert (await timed_get(client, stack))[3] == KEY_1.access_key
    aws_env.credentials.write_text(credentials_file(KEY_2))
    await asyncio.sleep(0.5)
    assert (await timed_get(client, stack))[3] == KEY_2.access_key  # no failure needed to notice


async def test_rejected_key_forces_a_refresh_and_the_spooled_body_is_sent_again(
    aws_env: AwsFiles, make_stack: StackFactory, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    """Keys rotated in the file and the old one deactivated before the proxy looked again: the
    upstream's UnrecognizedClientException triggers the refresh, and a 3 MiB body (spilled to a
    temporary file) is replayed intact."""
    aws_env.credentials.write_text(credentials_file(KEY_1))
    keys = {KEY_1.access_key: Key(KEY_1), KEY_2.access_key: Key(KEY_2)}
    stack = await make_stack(keys=keys, credentials=ChainCredentialSource(route_for(), recheck_interval=60))
    aws_env.credentials.write_text(credentials_file(KEY_2))
    del keys[KEY_1.access_key]
    body = os.urandom(3 * 1024 * 1024)
    async with client.post(stack.url / "prod" / "upload", data=body) as resp:
        assert resp.status == 200, await resp.text()
        seen = await resp.json()
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest() and seen["body_length"] == len(body)
    assert "upstream says UnrecognizedClientException; credentials refreshed, retrying once" in caplog.text


async def test_expired_credentials_with_a_failing_source_give_503_then_recover_without_restart(
    aws_env: AwsFiles, endpoints: StartEndpoint, monkeypatch: pytest.MonkeyPatch, make_stack: StackFactory, client: aiohttp.ClientSession,
) -> None:
    keys: dict[str, Key] = {}
    issuer = Issuer(keys, lifetime=2.0)
    endpoint = await endpoints(issuer.container)
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{endpoint.url}/v2/credentials")
    stack = await make_stack(keys=keys, credentials=ChainCredentialSource(route_for(), recheck_interval=0.2))
    _, expiry = issuer.issued[0]
    issuer.failing = True
    await asyncio.sleep(max(0.0, seconds_until(expiry) - 0.6))  # refreshing has failed by now
    assert (await timed_get(client, stack))[2] == 200  # still valid: keep signing with them
    await asyncio.sleep(seconds_until(expiry) + 0.1)
    async with client.get(stack.url / "prod" / "items") as resp:
        assert resp.status == 503
        error = await resp.json()
    issuer.failing = False
    recovered = await timed_get(client, stack)
    assert error["error"] == "credentials unavailable"
    assert "from container endpoint expired at" in error["detail"]
    assert "check the container credentials endpoint" in error["detail"]
    assert recovered[2] == 200


@pytest.mark.parametrize(
    ("headers", "body", "refreshes"),
    [
        ({"x-amzn-ErrorType": "ExpiredTokenException"}, b'{"message":"The security token included in the request is expired"}', 1),
        ({"x-amzn-ErrorType": "UnrecognizedClientException:http://internal.amazon.com/coral/"}, b"{}", 1),
        ({"x-amzn-ErrorType": "AccessDeniedException"}, b'{"message":"User is not authorized"}', 0),
        ({"x-amzn-ErrorType": "InvalidSignatureException"}, b'{"message":"The request signature we calculated"}', 0),
        ({"Content-Type": "application/xml"}, b"<Error><Code>ExpiredToken</Code><Message>The provided token has expired.</Message></Error>", 1),
        ({}, b'{"Message":"The security token included in the request is invalid."}', 1),
        ({}, b'{"Message":"Forbidden"}' + b" " * 100_000, 0),
    ],
)
async def test_only_token_rejections_force_a_refresh_and_other_403s_pass_untouched(
    make_stack: StackFactory, client: aiohttp.ClientSession, headers: dict[str, str], body: bytes, refreshes: int,
) -> None:
    from aiohttp import web

    from conftest import CREDENTIALS
    from proxy.credentials import StaticCredentialSource

    class Counting(StaticCredentialSource):
        calls = 0

        async def force_refresh(self, stale: Credentials | None = None) -> bool:
            Counting.calls += 1
            return False

    async def forbidden(request: web.BaseRequest, _: bytes) -> web.StreamResponse:
        return web.Response(status=403, body=body, headers=headers)

    stack = await make_stack(handler=forbidden, credentials=Counting(CREDENTIALS))
    async with client.get(stack.url / "prod" / "items") as resp:
        assert resp.status == 403
        assert await resp.read() == body
        for name, value in headers.items():
            assert resp.headers[name] == value
    assert Counting.calls == refreshes


async def test_sso_login_after_the_session_ended_is_picked_up_without_restart(
    aws_env: AwsFiles, endpoints: StartEndpoint, monkeypatch: pytest.MonkeyPatch, make_stack: StackFactory, client: aiohttp.ClientSession,
) -> None:
    start_url = "https://my-company.awsapps.com/start"
    keys: dict[str, Key] = {}
    issuer = Issuer(keys, lifetime=2.0)
    portal = SsoPortal(issuer, {"token-before"})
    server = await endpoints(portal.handle)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSO", str(server.url))
    # botocore fixes ~/.aws/sso/cache when it is imported, before HOME pointed at the temp dir.
    cache = aws_env.home / ".aws" / "sso" / "cache"
    monkeypatch.setattr(botocore.credentials.SSOProvider, "_SSO_TOKEN_CACHE_DIR", str(cache))
    aws_env.config.write_text(f"[profile dev]\nsso_start_url = {start_url}\nsso_region = us-east-1\n"
                              "sso_account_id = 123456789012\nsso_role_name = Developer\n")
    sso_login(cache, start_url, "token-before")
    source = ChainCredentialSource(route_for(profile="dev"), recheck_interval=0.2)
    stack = await make_stack(keys=keys, credentials=source)
    assert source.describe().startswith("profile dev (sso), expires ")
    assert (await timed_get(client, stack))[2] == 200
    portal.valid_tokens.clear()  # the SSO session ends (8 hours later, in real life)
    _, expiry = issuer.issued[-1]
    await asyncio.sleep(seconds_until(expiry) + 0.3)
    async with client.get(stack.url / "prod" / "items") as resp:
        assert resp.status == 503
        detail = (await resp.json())["detail"]
    portal.valid_tokens.add("token-after")
    sso_login(cache, start_url, "token-after")  # the user runs `aws sso login --profile dev`
    after = await timed_get(client, stack)
    assert "run `aws sso login --profile dev`" in detail and "profile dev (sso)" in detail
    assert after[2] == 200


async def test_one_source_serving_two_routes_resolves_once(
    aws_env: AwsFiles, endpoints: StartEndpoint, monkeypatch: pytest.MonkeyPatch, make_stack: StackFactory,
    client: aiohttp.ClientSession,
) -> None:
    keys: dict[str, Key] = {}
    issuer = Issuer(keys, lifetime=3600.0)
    endpoint = await endpoints(issuer.container)
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{endpoint.url}/v2/credentials")
    source = ChainCredentialSource(route_for())
    upstream = "http://127.0.0.1:9"
    stack = await make_stack(keys=keys, credentials=source, settings={"routes": [{"prefix": "/a", "upstream": upstream, "sign_host": SIGN_HOST}]})
    assert len(stack.proxy.routes) == 2 and issuer.fetches == 1
    assert (await timed_get(client, stack))[2] == 200
