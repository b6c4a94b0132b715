"""Health and metrics under the reserved prefix: answered by the proxy, never signed or forwarded;
metrics parsed with prometheus_client's parser and counted against what the client saw."""

from __future__ import annotations

import asyncio

import socket
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SIGN_HOST, Stack, StackFactory
from proxy.config import Settings, resolve_routes
from proxy.credentials import ChainCredentialSource
from proxy.fake_aws import Key
from proxy.signing import Credentials

PROCESS_CREDENTIALS = Credentials("ASIAPROCESSKEY0001", "process-secret-0123456789", "process-session-token-xyz")


async def test_health_reports_each_route_and_is_never_forwarded(stack: Stack, client: aiohttp.ClientSession) -> None:
    async with client.get(stack.url / "__sigv4proxy" / "health") as resp:
        assert resp.status == 200
        health = await resp.json()
    assert health["status"] == "ok"
    [route] = health["routes"]
    assert route["prefix"] == "/" and route["sign_host"] == SIGN_HOST and route["region"] == "ap-northeast-1"
    assert route["credentials"] == {"usable": True, "source": "static", "expires": None, "refreshes": 0,
                                    "refresh_failures": 0}
    for path, status in [("/__sigv4proxy/metrics", 200), ("/__sigv4proxy/nope", 404), ("/__sigv4proxy", 404),
                         ("/%5F%5Fsigv4proxy/health", 200), ("/prod/../__sigv4proxy/health", 200)]:
        async with client.get(f"{stack.url}{path}") as resp:
            assert resp.status == status, path
    async with client.post(stack.url / "__sigv4proxy" / "health") as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "GET, HEAD"
    assert stack.gateway.seen == []  # nothing under the prefix went upstream
    async with client.get(stack.url / "") as resp:  # while "/" is proxied like any path (cases O1)
        assert resp.status == 200 and (await resp.json())["raw_path"] == "/"
    assert len(stack.gateway.seen) == 1


async def test_reserved_prefix_is_configurable(make_stack: StackFactory, client: aiohttp.ClientSession) -> None:
    built = await make_stack(settings={"reserved_prefix": "_proxy"})
    async with client.get(built.url / "_proxy" / "health") as resp:
        assert resp.status == 200
    async with client.get(built.url / "__sigv4proxy" / "health") as resp:
        assert resp.status == 200
        assert (await resp.json())["raw_path"] == "/__sigv4proxy/health"  # now the upstream's path


def credential_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ChainCredentialSource, Path]:
    """A real botocore chain: a credential_process profile whose credentials expire after 3 seconds
    (so they are renewed in the background all along); creating `fail` makes the process fail."""
    fail = tmp_path / "fail"
    script = tmp_path / "creds.py"
    script.write_text(textwrap.dedent(f"""
        import json, pathlib, sys, datetime
        if pathlib.Path({str(fail)!r}).exists():
            sys.exit("credential process says no")
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=3)
        print(json.dumps({{"Version": 1, "AccessKeyId": {PROCESS_CREDENTIALS.access_key!r},
                          "SecretAccessKey": {PROCESS_CREDENTIALS.secret_key!r},
                          "SessionToken": {PROCESS_CREDENTIALS.token!r},
                          "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
    """))
    config = tmp_path / "config"
    config.write_text(f"[profile proc]\ncredential_process = {sys.executable} {script}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    [route] = resolve_routes(Settings(upstream="http://127.0.0.1:9", sign_host=SIGN_HOST, profile="proc"))
    return ChainCredentialSource(route, recheck_interval=0.5), fail


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample(families: list, name: str, **labels: str) -> float:
    for family in families:
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name} {labels}")


async def test_metrics_count_what_happened(make_stack: StackFactory, client: aiohttp.ClientSession,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, fail = credential_process(tmp_path, monkeypatch)
    dead = {"prefix": "/dead", "upstream": f"http://127.0.0.1:{closed_port()}", "sign_host": SIGN_HOST}
    built = await make_stack(credentials=source, keys={PROCESS_CREDENTIALS.access_key: Key(PROCESS_CREDENTIALS)},
                             settings={"routes": [dead]})
    received = 0  # body bytes the client got from route "/"

    async def call(method: str, path: str, status: int, data: bytes | None = None) -> None:
        nonlocal received
        async with client.request(method, f"{built.url}{path}", data=data) as resp:
            body = await resp.read()
            assert resp.status == status, body
            received += len(body)

    for _ in range(3):
        await call("GET", "/prod/items", 200)
    for _ in range(2):
        await call("GET", "/prod/status?code=500", 500)
    await call("POST", "/prod/fn", 200, data=b"x" * 1000)
    await call("GET", "/prod/download?size=5000", 200)
    built.gateway.denied_keys.add(PROCESS_CREDENTIALS.access_key)
    await call("PUT", "/prod/orders/1", 403, data=b"{}")
    built.gateway.denied_keys.clear()
    async with client.get(f"{built.url}/dead/x") as resp:
        assert resp.status == 502
    fail.touch()  # from now on every refresh fails: once the current set expires, requests get 503
    await asyncio.sleep(3.5)
    await call("GET", "/prod/items", 503)
    async with client.get(built.url / "__sigv4proxy" / "health") as resp:
        assert resp.status == 503
        health = await resp.json()
    assert health["status"] == "unavailable"
    assert all(not r["credentials"]["usable"] for r in health["routes"])
    assert "refreshing them failed" in health["routes"][0]["credentials"]["error"]

    async with client.get(built.url / "__sigv4proxy" / "metrics") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        families = list(text_string_to_metric_families(await resp.text()))

    requests = "sigv4_proxy_requests_total"
    assert sample(families, requests, route="/", status="200") == 5
    assert sample(families, requests, route="/", status="500") == 2
    assert sample(families, requests, route="/", status="403") == 1
    assert sample(families, requests, route="/", status="503") == 1
    assert sample(families, requests, route="/dead", status="502") == 1
    assert sample(families, requests, route="-", status="503") == 1  # the health check itself
    assert sample(families, "sigv4_proxy_request_duration_seconds_count", route="/") == 9
    assert sample(families, "sigv4_proxy_request_duration_seconds_bucket", route="/", le="+Inf") == 9
    assert sample(families, "sigv4_proxy_upstream_ttfb_seconds_count", route="/") == 8
    assert sample(families, "sigv4_proxy_request_bytes_total", route="/") == 1002
    assert sample(families, "sigv4_proxy_response_bytes_total", route="/") == received
    assert sample(families, "sigv4_proxy_upstream_errors_total", route="/dead", error="upstream unreachable") == 1
    assert sample(families, "sigv4_proxy_signing_failures_total", route="/", error="credentials unavailable") == 1
    assert sample(families, "sigv4_proxy_auth_refusals_total", route="/", cause="iam-denied") == 1
    assert source.refresh_failures >= 1
    assert sample(families, "sigv4_proxy_credential_refreshes_total", route="/") == source.refreshes
    assert sample(families, "sigv4_proxy_credential_refresh_failures_total", route="/") == source.refresh_failures
