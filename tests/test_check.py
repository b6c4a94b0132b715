"""`sigv4-proxy check`: succeeds against a working setup (the demo upstream included), fails with
the cause named against each broken one, and works as a real subprocess with env credentials."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import CREDENTIALS, SIGN_HOST, Stack, StackFactory
from proxy.check import run_check
from proxy.config import Settings
from proxy.credentials import StaticCredentialSource
from proxy.demo import DEMO_CREDENTIALS, DEMO_SIGN_HOST, start_demo_upstream

ROOT = Path(__file__).resolve().parents[1]


async def check(stack: Stack, path: str = "/prod/items", **settings: Any) -> tuple[int, str]:
    lines: list[str] = []
    values = {"upstream": str(stack.cloudfront_url), "sign_host": SIGN_HOST, **settings}
    code = await run_check(Settings(**values), path, lambda _r: StaticCredentialSource(CREDENTIALS), lines.append)
    return code, "\n".join(lines)


async def test_check_passes_against_the_demo_upstream(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with AsyncExitStack() as stack:
        upstream = await start_demo_upstream(stack)
        lines: list[str] = []
        settings = Settings(upstream=upstream, sign_host=DEMO_SIGN_HOST)
        code = await run_check(settings, "/prod/items?limit=1", lambda _r: StaticCredentialSource(DEMO_CREDENTIALS, "demo keys"),
                               lines.append)
    output = "\n".join(lines)
    assert code == 0, output
    assert "credentials  demo keys, no expiry" in output
    assert "clock        in sync with the upstream" in output
    assert "probe        GET /prod/items?limit=1 -> 200 OK" in output
    assert "result       OK: no signature refusal (the upstream answered 200)" in output
    # The probe's access line would interleave with the report: only the report says it.
    assert not [r for r in caplog.records if r.name == "sigv4_proxy.access" and "/prod/items" in r.getMessage()]


@pytest.mark.parametrize("setup, path, cause", [
    ({"cloudfront": {"forward_viewer_host": True}}, "/prod/items", "viewer-host-forwarded"),
    ({"cloudfront": {"origin_path": "/prod"}}, "/items", "origin-path"),
    ({"cloudfront": {"drop_query": True}}, "/prod/items?limit=1", "query-not-forwarded"),
    ({"cloudfront": {"drop_headers": ("Authorization",)}}, "/prod/items", "missing-authentication-token"),
    ({"settings": {"region": "eu-west-1"}}, "/prod/items", "wrong-region"),
    ({"deny": True}, "/prod/items", "iam-denied"),
    ({"skew": timedelta(hours=-1)}, "/prod/items", "clock-skew"),
])
async def test_check_fails_with_the_cause(make_stack: StackFactory, setup: dict[str, Any], path: str, cause: str) -> None:
    built = await make_stack(cloudfront=setup.get("cloudfront"))
    if setup.get("deny"):
        built.gateway.denied_keys.add(CREDENTIALS.access_key)
    if setup.get("skew"):
        built.gateway.clock_offset = setup["skew"]
    code, output = await check(built, path, **setup.get("settings", {}))
    assert code == 1, output
    assert f"result       FAILED: AWS refused the {'probe' if 'token' in cause else 'signature'}: {cause}:" in output
    if cause == "clock-skew":
        assert "clock        local clock is 1 h 0 s ahead of AWS's clock" in output or "1 h 1 s" in output, output


async def test_check_accepts_an_application_403(make_stack: StackFactory) -> None:
    code, output = await check(await make_stack(), "/prod/status?code=403")
    assert code == 0, output
    assert "the 403 is the application's own answer" in output


async def test_check_fails_when_the_upstream_is_unreachable(make_stack: StackFactory) -> None:
    built = await make_stack()
    code, output = await check(built, upstream="http://127.0.0.1:9")
    assert code == 1
    assert "clock        not measured" in output
    assert "FAILED: the probe never reached AWS: upstream unreachable" in output


async def run_cli(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SIGV4_PROXY_"))}
    env.update(AWS_ACCESS_KEY_ID=CREDENTIALS.access_key, AWS_SECRET_ACCESS_KEY=CREDENTIALS.secret_key,
               AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_EC2_METADATA_DISABLED="true")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "check", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_check_as_a_subprocess(make_stack: StackFactory) -> None:
    built = await make_stack()
    base = ["--upstream", str(built.cloudfront_url), "--sign-host", SIGN_HOST]
    code, out, err = await run_cli(*base, "--path", "/prod/items")
    assert code == 0, out + err
    assert "credentials  environment variables, no expiry" in out
    assert "result       OK" in out
    assert CREDENTIALS.secret_key not in out + err and CREDENTIALS.access_key not in out + err

    code, out, err = await run_cli(*base, "--region", "us-west-2", "--path", "/prod/items")
    assert code == 1, out + err
    assert "FAILED: AWS refused the signature: wrong-region:" in out

    code, out, err = await run_cli("--upstream", "ftp://nowhere")
    assert code == 2 and "config       FAILED" in out


async def test_check_shows_source_and_expiry(make_stack: StackFactory, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.fake_aws import Key
    from test_status_endpoints import PROCESS_CREDENTIALS, credential_process

    source, _fail = credential_process(tmp_path, monkeypatch)
    built = await make_stack(keys={PROCESS_CREDENTIALS.access_key: Key(PROCESS_CREDENTIALS)})
    lines: list[str] = []
    settings = Settings(upstream=str(built.cloudfront_url), sign_host=SIGN_HOST, profile="proc")
    code = await run_check(settings, "/prod/items", lambda _r: source, lines.append)
    output = "\n".join(lines)
    assert code == 0, output
    assert re.search(r"credentials  profile proc \(credential_process\), expires \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", output)
    for secret in (PROCESS_CREDENTIALS.access_key, PROCESS_CREDENTIALS.secret_key, PROCESS_CREDENTIALS.token or ""):
        assert secret not in output
