"""`sigv4-proxy` as a user runs it: the credential options, the start-up line (source and expiry,
never a secret) and the fail-fast exit when no credentials can be found."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import SIGN_HOST
from credential_servers import AwsFiles, StartEndpoint, aws_env, endpoints, iso, moto_url  # noqa: F401
from test_credentials_sts import BASE_KEYS, ROLE, start_tap

ROOT = Path(__file__).resolve().parent.parent
PROXY = [sys.executable, "-m", "proxy", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9",
         "--sign-host", SIGN_HOST]


async def startup_line(*args: str) -> str:
    """Start the proxy, return the start-up line for route "/", then stop it with SIGTERM."""
    proc = await asyncio.create_subprocess_exec(*PROXY, *args, cwd=ROOT, env=dict(os.environ),
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(15):
            while line := (await proc.stderr.readline()).decode():
                if "credentials:" in line:
                    return line
        raise AssertionError("the proxy exited without a start-up line")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await proc.wait()


async def test_startup_line_names_the_source_and_expiry_never_a_secret(aws_env: AwsFiles) -> None:
    secret, token = "process-secret-value-123", "process-session-token-456"
    answer = {"Version": 1, "AccessKeyId": "ASIAPROCESSKEY01", "SecretAccessKey": secret, "SessionToken": token,
              "Expiration": iso(datetime.now(timezone.utc) + timedelta(hours=1))}
    helper = aws_env.home / "helper.py"
    helper.write_text(f"print({json.dumps(json.dumps(answer))})\n")
    aws_env.config.write_text(f"[profile dev]\ncredential_process = {sys.executable} {helper}\n")
    line = await startup_line("--profile", "dev")
    assert "credentials: profile dev (credential_process), expires " in line
    assert "UTC (in 60 min)" in line or "UTC (in 59 min)" in line
    assert secret not in line and token not in line and "ASIAPROCESSKEY01" not in line


async def test_role_options_reach_sts_and_the_startup_line(
    aws_env: AwsFiles, moto_url: str, monkeypatch: pytest.MonkeyPatch, endpoints: StartEndpoint,
) -> None:
    aws_env.credentials.write_text(BASE_KEYS)
    tap = await start_tap(moto_url, {}, monkeypatch, endpoints)
    line = await startup_line("--role-arn", ROLE, "--role-session-name", "cli session", "--external-id", "ext-9")
    assert f"credentials: assume-role {ROLE} (session cli-session) from credentials file, expires " in line
    assert [(c["RoleArn"], c["RoleSessionName"], c["ExternalId"]) for c in tap.calls] == [(ROLE, "cli-session", "ext-9")]


def test_no_credentials_fails_fast_with_one_line(aws_env: AwsFiles) -> None:
    import subprocess

    started = time.monotonic()
    done = subprocess.run(PROXY, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sigv4-proxy: no credentials for route /; tried environment variables")
    assert "imds (disabled by AWS_EC2_METADATA_DISABLED)" in lines[0]
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("how", [["--profile", "deev"], []])
def test_unknown_profile_fails_with_one_line_naming_it(aws_env: AwsFiles, how: list[str]) -> None:
    """A mistyped --profile or AWS_PROFILE: botocore raises ProfileNotFound from its first
    question to the session; the user gets one line naming the profile and where profiles live."""
    import subprocess

    aws_env.config.write_text("[profile dev]\nregion = us-east-1\n")
    env = dict(os.environ)
    if not how:
        env["AWS_PROFILE"] = "deev"
    done = subprocess.run([*PROXY, *how], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "profile deev" in lines[0] and "not found" in lines[0] and str(aws_env.config) in lines[0]
    assert "dev" in lines[0].split("not found", 1)[1]  # the profiles that do exist
