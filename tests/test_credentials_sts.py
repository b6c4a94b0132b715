"""Assumed roles against moto's STS server: refreshed ahead of expiry, never blocking a request,
never mixing two key sets; session names STS accepts; profiles with source_profile + role_arn."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import aiohttp
import pytest

from conftest import SIGN_HOST, StackFactory
from credential_servers import (  # noqa: F401 (aws_env, endpoints, moto_url: fixtures)
    AwsFiles, StartEndpoint, StsTap, aws_env, endpoints, moto_url, route_for, seconds_until, timed_get,
)
from proxy.config import ConfigError, Settings, resolve_routes
from proxy.credential_chain import role_session_name
from proxy.credentials import ChainCredentialSource
from proxy.fake_aws import Key

ROLE = "arn:aws:iam::123456789012:role/api-caller"
BASE_KEYS = "[default]\naws_access_key_id = AKIDBASEKEY0001\naws_secret_access_key = base-secret-0001\n"
# botocore refuses DurationSeconds under STS's 900 before sending; these tests need seconds.
SHORT_DURATIONS_OK = "[default]\nparameter_validation = false\n"


async def start_tap(
    moto: str, keys: dict[str, Key], monkeypatch: pytest.MonkeyPatch, endpoints: StartEndpoint, delay: float = 0.0
) -> StsTap:
    tap = StsTap(moto, keys, delay=delay)
    server = await endpoints(tap.handle)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", str(server.url))
    return tap


async def test_role_refreshes_before_expiry_while_requests_keep_flowing(
    aws_env: AwsFiles, moto_url: str, monkeypatch: pytest.MonkeyPatch, endpoints: StartEndpoint, make_stack: StackFactory,
    client: aiohttp.ClientSession,
) -> None:
    aws_env.credentials.write_text(BASE_KEYS)
    aws_env.config.write_text(SHORT_DURATIONS_OK)
    keys: dict[str, Key] = {}
    sts_delay = 0.8  # every STS call takes this long: a request that waited for one would show it
    tap = await start_tap(moto_url, keys, monkeypatch, endpoints, delay=sts_delay)
    source = ChainCredentialSource(route_for(role_arn=ROLE, duration_seconds=4))
    stack = await make_stack(keys=keys, credentials=source)
    first_key, first = next(iter(keys.items()))
    assert first.expires is not None
    results = []
    # Requests every 25 ms until well past the first set's expiry (which the gateway enforces).
    deadline = time.monotonic() + seconds_until(first.expires) + 1.0
    while time.monotonic() < deadline:
        results.append(await timed_get(client, stack))
        await asyncio.sleep(0.025)

    assert {r[2] for r in results} == {200}
    assert len(tap.calls) >= 2 and all(c["RoleArn"] == ROLE and c["DurationSeconds"] == "4" for c in tap.calls)
    # The refresh happened ahead of expiry: the next set signed requests before the first expired.
    switch = next(wall for _, _, _, key, wall in results if key != first_key)
    assert (first.expires - switch).total_seconds() > 0.5, (first.expires, switch)
    # No request waited for STS: those sent while the refresh call was in flight were answered fast.
    second_started, second_answered = tap.windows[1]
    during = [took for started, took, *_ in results if second_started <= started <= second_answered - 0.1]
    assert len(during) >= 5, during
    assert max(during) < sts_delay / 3, during
    assert max(r[1] for r in results) < sts_delay / 2


async def test_signer_never_mixes_two_key_sets(
    aws_env: AwsFiles, moto_url: str, monkeypatch: pytest.MonkeyPatch, endpoints: StartEndpoint, make_stack: StackFactory,
    client: aiohttp.ClientSession,
) -> None:
    """Many concurrent requests across several refreshes: each verifies with one set's key, secret
    and token (the gateway checks all three together); one mismatch would be a 403."""
    aws_env.credentials.write_text(BASE_KEYS)
    aws_env.config.write_text(SHORT_DURATIONS_OK)
    keys: dict[str, Key] = {}
    tap = await start_tap(moto_url, keys, monkeypatch, endpoints)
    stack = await make_stack(keys=keys, credentials=ChainCredentialSource(route_for(role_arn=ROLE, duration_seconds=1)))
    statuses: list[int] = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        batch = await asyncio.gather(*(timed_get(client, stack) for _ in range(20)))
        statuses += [r[2] for r in batch]
    assert len(tap.calls) >= 4  # several refreshes happened under load
    assert len(statuses) > 200 and set(statuses) == {200}


async def test_session_name_and_external_id_reach_sts(
    aws_env: AwsFiles, moto_url: str, monkeypatch: pytest.MonkeyPatch, endpoints: StartEndpoint,
) -> None:
    aws_env.credentials.write_text(BASE_KEYS)
    expected_default = f"sigv4-proxy-{socket.gethostname()}"[:64]
    tap = await start_tap(moto_url, {}, monkeypatch, endpoints)
    source = ChainCredentialSource(route_for(role_arn=ROLE, external_id="ext-123"))
    await source.start()
    await source.close()
    monkeypatch.setenv("AWS_ROLE_SESSION_NAME", "ci-run-42")
    named = ChainCredentialSource(route_for(role_arn=ROLE))
    await named.start()
    await named.close()
    default, from_env = tap.calls
    assert default["RoleSessionName"] == expected_default
    assert default["ExternalId"] == "ext-123"
    assert from_env["RoleSessionName"] == "ci-run-42" and "ExternalId" not in from_env
    assert "DurationSeconds" not in from_env  # STS's default unless the route sets one
    description = named.describe()
    assert description.startswith(f"assume-role {ROLE} (session ci-run-42) from credentials file")
    assert "expires" in description and "base-secret" not in description


@pytest.mark.parametrize(
    ("explicit", "hostname", "expected"),
    [
        (None, "build-agent-7", "sigv4-proxy-build-agent-7"),
        # C2 in shared/cases: a 60+ character host name still gives a name STS accepts.
        (None, "ip-10-0-12-34.ap-northeast-1.compute.internal.very-long-suffix.example",
         "sigv4-proxy-ip-10-0-12-34.ap-northeast-1.compute.internal.very-l"),
        ("my session/with:odd*chars", "h", "my-session-with-odd-chars"),
        ("x", "h", "sigv4-proxy-x"),  # STS needs at least two characters
        ("a" * 80, "h", "a" * 64),
    ],
)
def test_role_session_name_fits_sts(explicit: str | None, hostname: str, expected: str) -> None:
    name = role_session_name(explicit, hostname)
    assert name == expected
    assert re.fullmatch(r"[\w+=,.@-]{2,64}", name)


async def test_profile_with_source_profile_and_role_arn_refreshes(
    aws_env: AwsFiles, moto_url: str, monkeypatch: pytest.MonkeyPatch, endpoints: StartEndpoint, make_stack: StackFactory,
    client: aiohttp.ClientSession,
) -> None:
    aws_env.credentials.write_text(BASE_KEYS.replace("[default]", "[base]"))
    aws_env.config.write_text(f"[profile app]\nrole_arn = {ROLE}\nsource_profile = base\n"
                               "duration_seconds = 2\nparameter_validation = false\n")
    keys: dict[str, Key] = {}
    tap = await start_tap(moto_url, keys, monkeypatch, endpoints)
    source = ChainCredentialSource(route_for(profile="app"))
    stack = await make_stack(keys=keys, credentials=source)
    assert source.describe().startswith(f"profile app (assume-role {ROLE}), expires ")
    first = next(iter(keys.values()))
    assert first.expires is not None
    statuses = []
    deadline = time.monotonic() + seconds_until(first.expires) + 1.0
    while time.monotonic() < deadline:
        statuses.append((await timed_get(client, stack))[2])
        await asyncio.sleep(0.1)
    statuses.append((await timed_get(client, stack))[2])  # well after the first set expired
    assert set(statuses) == {200}
    assert len(tap.calls) >= 2 and {c["RoleArn"] for c in tap.calls} == {ROLE}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"external_id": "x"}, "need a role_arn"),
        ({"role_session_name": "x"}, "need a role_arn"),
    ],
)
def test_role_options_without_a_role_are_refused(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_routes(Settings(upstream="http://127.0.0.1:9", sign_host=SIGN_HOST, **fields))


def test_duration_outside_sts_bounds_is_refused() -> None:
    from proxy.config import load_settings

    with pytest.raises(ConfigError, match="routes.0.duration_seconds"):
        load_settings({"routes": [{"upstream": "http://127.0.0.1:9", "role_arn": ROLE, "duration_seconds": 60}]}, None)


async def test_web_identity_token_file(
    aws_env: AwsFiles, moto_url: str, monkeypatch: pytest.MonkeyPatch, endpoints: StartEndpoint,
    make_stack: StackFactory, client: aiohttp.ClientSession,
) -> None:
    """EKS IRSA and GitHub Actions OIDC: a token file and a role, exchanged at STS."""
    token = aws_env.home / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_ROLE_SESSION_NAME", "pod-7")
    keys: dict[str, Key] = {}
    tap = await start_tap(moto_url, keys, monkeypatch, endpoints)
    source = ChainCredentialSource(route_for())
    stack = await make_stack(keys=keys, credentials=source)
    assert source.describe().startswith("web identity, expires ")
    assert (await timed_get(client, stack))[2] == 200
    assert [(c["Action"], c["RoleArn"], c["RoleSessionName"]) for c in tap.calls] == [
        ("AssumeRoleWithWebIdentity", ROLE, "pod-7")
    ]
