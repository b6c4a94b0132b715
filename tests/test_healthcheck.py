"""`python -m proxy.healthcheck`, the container's HEALTHCHECK: exit 0 only on a 200 from the endpoint."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from proxy.fake_aws import Listening, listen
from proxy.healthcheck import HEALTH_PATH, default_url, main
from proxy_process import REPO, isolated_env


@pytest.fixture
async def health_server() -> AsyncIterator[tuple[Listening, list[str]]]:
    """Answers /__sigv4proxy/health?status=N with N (and a redirect target that must stay unvisited)."""
    hits: list[str] = []

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        hits.append(request.path)
        if request.path == "/elsewhere":
            return web.Response(text="fine")
        if "delay" in request.query:
            await asyncio.sleep(float(request.query["delay"]))
        status = int(request.query.get("status", "200"))
        headers = {"Location": "/elsewhere"} if 300 <= status < 400 else None
        return web.json_response({"status": status}, status=status, headers=headers)

    server = await listen(handle)
    yield server, hits
    await server.close()


async def check(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


@pytest.mark.parametrize(("status", "code"), [(200, 0), (204, 1), (404, 1), (500, 1), (503, 1)])
async def test_exit_code_follows_the_status(health_server, status: int, code: int) -> None:
    server, _ = health_server
    assert await check(f"{server.url}{HEALTH_PATH}?status={status}") == code


async def test_redirect_is_unhealthy_and_not_followed(health_server) -> None:
    server, hits = health_server
    assert await check(f"{server.url}{HEALTH_PATH}?status=302") == 1
    assert hits == [HEALTH_PATH]


async def test_no_listener_is_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    assert await check(f"http://127.0.0.1:{free_port}{HEALTH_PATH}") == 1
    assert "no answer" in capsys.readouterr().err


async def test_slow_answer_times_out(health_server) -> None:
    server, _ = health_server
    assert await check("--timeout", "0.3", f"{server.url}{HEALTH_PATH}?delay=2") == 1


async def test_http_proxy_variables_are_ignored(health_server, monkeypatch: pytest.MonkeyPatch) -> None:
    server, hits = health_server
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a dead egress proxy
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert await check(f"{server.url}{HEALTH_PATH}") == 0
    assert hits == [HEALTH_PATH]


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        (None, "http://127.0.0.1:8080/__sigv4proxy/health"),
        ("0.0.0.0:8080", "http://127.0.0.1:8080/__sigv4proxy/health"),
        ("127.0.0.1:9000", "http://127.0.0.1:9000/__sigv4proxy/health"),
        ("[::]:8080", "http://[::1]:8080/__sigv4proxy/health"),
        ("[::1]:8081", "http://[::1]:8081/__sigv4proxy/health"),
    ],
)
def test_default_url_follows_the_listen_setting(listen: str | None, url: str) -> None:
    assert default_url({} if listen is None else {"SIGV4_PROXY_LISTEN": listen}) == url


async def test_module_command_uses_the_listen_address_like_the_image(health_server) -> None:
    """Exactly the image's HEALTHCHECK command, with the image's wildcard listen address."""
    server, hits = health_server
    env = isolated_env(extra={"SIGV4_PROXY_LISTEN": f"0.0.0.0:{server.url.port}"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.healthcheck", cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert hits == [HEALTH_PATH]
    assert out.decode().strip() == f"http://127.0.0.1:{server.url.port}{HEALTH_PATH}: HTTP 200"


async def test_image_command_follows_a_custom_prefix_and_presents_the_client_token() -> None:
    """A real proxy with its own prefix and a client token, and the image's HEALTHCHECK command with
    the same environment: healthy, and the upstream (nothing listens there) never asked."""
    from proxy_process import spawn
    from proxy.signing import Credentials

    token = "health-token-0123456789"
    extra = {"SIGV4_PROXY_RESERVED_PREFIX": "/_p/", "SIGV4_PROXY_CLIENT_TOKEN": token}
    env = isolated_env(Credentials("AKIDHEALTHCHECK", "health-secret", None), extra)
    proxy = await spawn("--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9",
                        "--sign-host", "a.execute-api.us-east-1.amazonaws.com", env=env)
    try:
        async def image_check(environment: dict[str, str]) -> tuple[int | None, str]:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy.healthcheck", cwd=REPO, env=environment,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            out, err = await process.communicate()
            return process.returncode, (out + err).decode().strip()

        listen = {"SIGV4_PROXY_LISTEN": f"0.0.0.0:{proxy.port}"}
        code, line = await image_check({**env, **listen})
        assert (code, line) == (0, f"http://127.0.0.1:{proxy.port}/_p/health: HTTP 200")
        without_token = {k: v for k, v in env.items() if k != "SIGV4_PROXY_CLIENT_TOKEN"}
        code, line = await image_check({**without_token, **listen})
        assert (code, line) == (1, f"http://127.0.0.1:{proxy.port}/_p/health: HTTP 401")
    finally:
        await proxy.stop()
