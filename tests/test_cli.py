"""The command line as a user runs it: real processes, exit codes and the lines they print."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from conftest import CREDENTIALS, SIGN_HOST, Stack
from proxy_process import REPO, isolated_env, spawn





def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], cwd=REPO, env=env or isolated_env(), capture_output=True, text=True, timeout=timeout
    )


def test_help_and_version() -> None:
    help_text = run_cli("--help").stdout
    assert "run" in help_text and "demo" in help_text
    run_help = run_cli("run", "--help").stdout
    for option in ("--config", "--listen", "--upstream", "--sign-host", "--region", "--service", "--profile", "--timeout", "--max-body-size", "--ca-bundle", "--insecure"):
        assert option in run_help
    from importlib.metadata import version

    assert run_cli("--version").stdout.strip() == f"sigv4-proxy {version('sigv4-proxy')}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "127.0.0.1:0"], "no upstream"),
        (["--upstream", "https://api.example.com"], "set --region and --service"),
        (["--upstream", "https://x.example", "--config", "/nonexistent.toml"], "does not exist"),
    ],
)
def test_invalid_config_fails_fast_with_one_line(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_no_credentials_fails_fast() -> None:
    result = run_cli("--upstream", "https://d1.cloudfront.net", "--sign-host", SIGN_HOST, "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert "no credentials" in result.stderr and "AWS_PROFILE" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_taken_fails_fast() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = isolated_env(extra={"AWS_ACCESS_KEY_ID": "AKIDCLI", "AWS_SECRET_ACCESS_KEY": "cli-secret-value"})
        result = run_cli("--upstream", "https://d1.cloudfront.net", "--sign-host", SIGN_HOST, "--listen", f"127.0.0.1:{port}", env=env)
    assert result.returncode == 2
    assert "port is taken" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HTTPS_PROXY", "socks5://alice:s3cret-pw@proxy.corp:1080",
         "HTTPS_PROXY: socks5:// proxies are not supported, only http:// ones (proxy proxy.corp)"),
        ("https_proxy", "https://alice:s3cret-pw@proxy.corp:3128",
         "https_proxy: https:// proxies are not supported, only http:// ones (proxy proxy.corp)"),
        ("HTTP_PROXY", "http://alice:s3cret-pw@proxy.corp:port",
         "HTTP_PROXY is not a proxy URL (expected http://[user:password@]host[:port])"),
    ],
)
def test_an_unusable_outbound_proxy_fails_start_up_with_one_line(variable: str, value: str, message: str) -> None:
    """Before credentials are looked for (there are none here), and without the proxy's password."""
    env = isolated_env(extra={variable: value})
    result = run_cli("--upstream", "https://d1.cloudfront.net", "--sign-host", SIGN_HOST, "--listen", "127.0.0.1:0", env=env)
    assert (result.returncode, result.stderr) == (2, f"sigv4-proxy: {message}\n")


async def test_the_start_up_line_names_the_outbound_proxy_without_its_credentials() -> None:
    env = isolated_env(CREDENTIALS, {"HTTPS_PROXY": "http://alice:s3cret-pw@127.0.0.1:9", "NO_PROXY": "example.com"})
    proxy = await spawn("--listen", "127.0.0.1:0", "--upstream", "https://d1.cloudfront.net", "--sign-host", SIGN_HOST, env=env)
    await proxy.stop()  # nothing was sent: pools (and the proxy each uses) are made at start-up, connections later
    log = "".join(proxy.log)
    assert "/ -> https://d1.cloudfront.net via outbound proxy 127.0.0.1:9 (signing host" in log
    assert "s3cret-pw" not in log and "alice" not in log


async def test_env_configured_proxy_prints_its_route_and_works(stack: Stack) -> None:
    env = isolated_env(CREDENTIALS, {
        "SIGV4_PROXY_UPSTREAM": str(stack.cloudfront_url),
        "SIGV4_PROXY_SIGN_HOST": SIGN_HOST,
        "SIGV4_PROXY_LISTEN": "127.0.0.1:0",
    })
    proxy = await spawn(env=env)
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(proxy.url / "prod" / "items", params={"limit": "10"}) as resp:
                assert resp.status == 200
                assert (await resp.json())["params"] == [["limit", "10"]]
        proxy.send(signal.SIGTERM)
        assert await proxy.exit_code(10) == 0
    finally:
        await proxy.stop()
    log = "".join(proxy.log)
    assert f"-> {stack.cloudfront_url}" in log
    assert f"signing host {SIGN_HOST}, region ap-northeast-1, service execute-api" in log
    assert "credentials: environment variables" in log
    assert CREDENTIALS.secret_key not in log


async def test_demo_answers_through_the_proxy() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "demo", "--listen", "127.0.0.1:0", cwd=REPO, env=isolated_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        printed = ""
        while "'http://127.0.0.1:" not in printed:  # the demo prints the curl commands to try
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            assert line, "demo exited early"
            printed += line.decode()
        url = printed.rsplit("'", 2)[1]
        assert url.startswith("http://127.0.0.1:") and "/prod/items?" in url
        async with aiohttp.ClientSession() as client:
            async with client.get(url) as resp:
                answer = await resp.json()
        assert resp.status == 200 and answer["verified"] is True
        assert answer["received"]["params"][0] == ["limit", "10"]
        events = url.split("/prod/", 1)[0] + "/prod/events"
        async with aiohttp.ClientSession() as client:
            async with client.head(events) as head:  # the stream's headers only, no body, no error
                assert head.status == 200 and head.headers["Content-Type"] == "text/event-stream"
            async with client.get(url) as resp:  # and the demo still answers afterwards
                assert resp.status == 200
    finally:
        proc.terminate()
        _, err = await proc.communicate()
    assert proc.returncode == 0
    assert "Traceback" not in err.decode(), err.decode()


async def test_run_does_not_load_awscrt_but_demo_does() -> None:
    """botocore would load awscrt (5.5 MiB resident) though only the demo's verifier uses it."""
    env = isolated_env(CREDENTIALS)
    proxy = await spawn("--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9", "--sign-host", SIGN_HOST, env=env)
    demo = await spawn("demo", "--listen", "127.0.0.1:0", env=env)
    try:
        assert "_awscrt" not in Path(f"/proc/{proxy.process.pid}/maps").read_text()
        assert "_awscrt" in Path(f"/proc/{demo.process.pid}/maps").read_text()
    finally:
        await proxy.stop()
        await demo.stop()
