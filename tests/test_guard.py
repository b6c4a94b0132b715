"""The proxy signs only for requests it should: raw bytes on a socket, as an attacker would send them.

Every refused request is checked against the verifying gateway's `seen` list: it never got there.
Each refusal has a twin that differs only in the refused part and does get through, so a test
cannot pass because the stack is broken.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import StackFactory
from proxy.cli import parse_args, settings_from
from proxy.config import ConfigError
from rawhttp import exchange, request_bytes

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-token-0123456789abcdef"


def paths_seen(stack) -> list[str]:
    return [str(seen["raw_path"]) for seen in stack.gateway.seen]


def headers_seen(stack, index: int = -1) -> dict[str, str]:
    return {n.lower(): v for n, v in stack.gateway.seen[index]["headers"]}


# --- DNS rebinding: Host must name the proxy -------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}", "localhost.evil.example", "[::2]:{port}"],
)
async def test_host_not_naming_the_proxy_is_refused(make_stack: StackFactory, host: str) -> None:
    stack = await make_stack()
    port = stack.proxy.port
    resp = await exchange(port, request_bytes("GET", "/prod/rebound", [("Host", host.format(port=port))]))
    assert resp.status == 421
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json()["error"] == "unknown host"
    assert resp.closed
    assert paths_seen(stack) == []


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}@evil.example", "127.0.0.1:{port}:80", "127.0.0.1:http", "local host", "[::1]x:{port}"]
)
async def test_host_that_is_not_host_and_port_is_a_400(make_stack: StackFactory, host: str) -> None:
    # Read by its first name, "127.0.0.1:80@evil.example" passed the check above (RFC 9112 3.2).
    stack = await make_stack()
    resp = await exchange(stack.proxy.port, request_bytes("GET", "/prod/odd", [("Host", host.format(port=stack.proxy.port))]))
    assert resp.status == 400
    assert resp.json()["error"] == "malformed Host"
    assert resp.closed
    assert paths_seen(stack) == []


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost:{port}", "[::1]:{port}", "devbox.internal:9999", None]
)
async def test_names_of_the_proxy_pass(make_stack: StackFactory, host: str | None) -> None:
    stack = await make_stack(settings={"allowed_hosts": ["DevBox.internal"]})
    port = stack.proxy.port
    if host is None:  # an HTTP/1.0 client without Host: no browser, so no rebinding
        raw = b"GET /prod/named HTTP/1.0\r\n\r\n"
    else:
        raw = request_bytes("GET", "/prod/named", [("Host", host.format(port=port)), ("Connection", "close")])
    resp = await exchange(port, raw)
    assert resp.status == 200, resp.body
    assert paths_seen(stack) == ["/prod/named"]


async def test_an_accepted_host_lets_no_other_value_through_after_it(make_stack: StackFactory) -> None:
    # Accepted Host values are remembered; each other value is still checked in full.
    stack = await make_stack()
    port = stack.proxy.port
    verdicts = []
    for host in ["127.0.0.1:{port}", "127.0.0.1:{port}", "evil.example:{port}", "127.0.0.1:{port}@evil.example",
                 "127.0.0.1:{port}"]:
        raw = request_bytes("GET", "/prod/again", [("Host", host.format(port=port)), ("Connection", "close")])
        verdicts.append((await exchange(port, raw)).status)
    assert verdicts == [200, 200, 421, 400, 200]
    assert paths_seen(stack) == ["/prod/again"] * 3


# --- never an open proxy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, host",
    [
        ("http://other.example/prod/x", "other.example"),
        ("http://other.example/prod/x", "127.0.0.1"),
        ("http://127.0.0.1:{port}/prod/x", "127.0.0.1:{port}"),  # even naming the proxy itself
        ("https://other.example:443/prod/x?y=1", "127.0.0.1"),
        ("*", "127.0.0.1"),
    ],
)
async def test_absolute_form_targets_are_refused(make_stack: StackFactory, target: str, host: str) -> None:
    stack = await make_stack()
    port = stack.proxy.port
    method = "OPTIONS" if target == "*" else "GET"
    resp = await exchange(port, request_bytes(method, target.format(port=port), [("Host", host.format(port=port))]))
    assert resp.status == 400
    assert resp.json()["error"] == ("asterisk-form target refused" if target == "*" else "absolute-form target refused")
    assert resp.closed
    assert paths_seen(stack) == []


async def test_connect_is_refused_with_405(make_stack: StackFactory) -> None:
    stack = await make_stack()
    port = stack.proxy.port
    raw = request_bytes("CONNECT", "other.example:443", [("Host", "other.example:443")])
    # What a client sends next would be tunnel bytes: it must go nowhere, not even to our upstream.
    raw += request_bytes("GET", "/prod/tunnelled", [("Host", f"127.0.0.1:{port}")])
    resp = await exchange(port, raw)
    assert resp.status == 405
    assert resp.json()["error"] == "CONNECT refused"
    assert "GET" in resp.headers["Allow"]
    assert resp.headers["Connection"] == "close"
    assert resp.after == b""  # no tunnel, no second answer
    assert paths_seen(stack) == []


async def test_trace_is_refused_so_signed_credentials_are_never_echoed(make_stack: StackFactory) -> None:
    stack = await make_stack()
    port = stack.proxy.port
    resp = await exchange(port, request_bytes("TRACE", "/prod/items", [("Host", f"127.0.0.1:{port}")]))
    assert resp.status == 405
    assert resp.json()["error"] == "TRACE refused"
    assert paths_seen(stack) == []


# --- client_token ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, status, error",
    [
        ([], 401, "client token required"),
        ([("X-Proxy-Token", "wrong")], 401, "client token rejected"),
        ([("X-Proxy-Token", TOKEN[:-1] + "X")], 401, "client token rejected"),  # same length, last byte off
        ([("Proxy-Authorization", "Bearer wrong")], 401, "client token rejected"),
        ([("Proxy-Authorization", f"Basic {TOKEN}")], 401, "client token required"),
        ([("Authorization", f"Bearer {TOKEN}")], 401, "client token required"),  # that one is the API's
        ([("X-Proxy-Token", TOKEN)], 200, None),
        ([("Proxy-Authorization", f"Bearer {TOKEN}")], 200, None),
        ([("proxy-authorization", f"bearer  {TOKEN} ")], 200, None),
    ],
)
async def test_client_token(
    make_stack: StackFactory,
    caplog: pytest.LogCaptureFixture,
    headers: list[tuple[str, str]],
    status: int,
    error: str | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    stack = await make_stack(settings={"client_token": TOKEN})
    port = stack.proxy.port
    raw = request_bytes("GET", "/prod/tok", [("Host", f"127.0.0.1:{port}"), ("Connection", "close"), *headers])
    resp = await exchange(port, raw)
    assert resp.status == status, resp.body
    if error is not None:
        assert resp.json()["error"] == error
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert paths_seen(stack) == []
    else:
        assert paths_seen(stack) == ["/prod/tok"]
        seen = headers_seen(stack)
        assert "x-proxy-token" not in seen and "proxy-authorization" not in seen  # stripped
        assert TOKEN not in str(stack.gateway.seen)
    assert TOKEN not in caplog.text  # never logged


# --- cross-site browser requests -----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, allowed",
    [
        ([("Origin", "http://evil.example")], False),
        ([("Origin", "http://localhost:3000")], False),  # a local front-end, but not listed
        ([("Origin", "null")], False),  # sandboxed iframe, file: page
        ([("Origin", "https://127.0.0.1:{port}")], False),  # the proxy speaks http only
        ([("Sec-Fetch-Site", "cross-site")], False),  # a form or no-cors fetch without Origin
        ([("Origin", "http://localhost:3000"), ("Sec-Fetch-Site", "same-site")], False),
        ([("Origin", "http://127.0.0.1:{port}"), ("Sec-Fetch-Site", "same-origin")], True),  # its own page
        ([("Origin", "http://localhost:{port}")], True),
        ([("Origin", "http://[::1]:{port}")], True),
        ([("Origin", "http://localhost:5173"), ("Sec-Fetch-Site", "cross-site")], True),  # listed
        ([("Sec-Fetch-Site", "same-site")], True),
        ([("Sec-Fetch-Site", "none")], True),  # typed into the address bar
        ([], True),  # curl
    ],
)
async def test_cross_site_requests_are_refused(
    make_stack: StackFactory, headers: list[tuple[str, str]], allowed: bool
) -> None:
    stack = await make_stack(settings={"cors_origins": ["http://localhost:5173"]})
    port = stack.proxy.port
    headers = [(n, v.format(port=port)) for n, v in headers]
    base = [("Host", f"127.0.0.1:{port}"), ("Connection", "close"), ("Content-Type", "application/x-www-form-urlencoded")]
    resp = await exchange(port, request_bytes("POST", "/prod/transfer", [*base, *headers], b"amount=1"))
    if allowed:
        assert resp.status == 200, resp.body
        assert paths_seen(stack) == ["/prod/transfer"]
    else:
        assert resp.status == 403
        assert resp.json()["error"] in ("cross-origin request refused", "cross-site request refused")
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert paths_seen(stack) == []


# --- listening beyond loopback -----------------------------------------------------------------


async def test_non_loopback_listen_needs_allow_remote(make_stack: StackFactory) -> None:
    with pytest.raises(ConfigError, match="--allow-remote"):
        await make_stack(settings={"listen": "0.0.0.0:0"})


async def test_allow_remote_starts_and_warns(make_stack: StackFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sigv4_proxy")
    stack = await make_stack(settings={"listen": "0.0.0.0:0", "allow_remote": True})
    assert "beyond loopback" in caplog.text and "set client_token" in caplog.text
    resp = await exchange(stack.proxy.port, request_bytes("GET", "/prod/r", [("Host", "127.0.0.1"), ("Connection", "close")]))
    assert resp.status == 200


def test_cli_refuses_non_loopback_listen() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "--listen", "0.0.0.0:0", "--upstream", "http://127.0.0.1:9",
         "--region", "us-east-1", "--service", "execute-api"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 2
    assert "--allow-remote" in done.stderr and "Traceback" not in done.stderr


# --- settings ----------------------------------------------------------------------------------


def test_cli_options_repeat_and_normalize() -> None:
    args = parse_args(
        ["--upstream", "http://127.0.0.1:9", "--cors-origin", "HTTP://LocalHost:3000/", "--cors-origin",
         "http://127.0.0.1:80", "--allowed-host", "DevBox", "--cors-expose-header", "x-amzn-RequestId",
         "--cors-allow-credentials", "--cors-max-age", "60", "--allow-remote", "--client-token", TOKEN]
    )
    settings = settings_from(args)
    assert settings.cors_origins == ["http://localhost:3000", "http://127.0.0.1"]
    assert settings.allowed_hosts == ["devbox"]
    assert settings.cors_expose_headers == ["x-amzn-RequestId"]
    assert settings.cors_allow_credentials and settings.cors_max_age == 60 and settings.allow_remote
    assert settings.client_token is not None and settings.client_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings)


def test_env_lists_json_or_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGV4_PROXY_CORS_ORIGINS", "http://localhost:3000, http://localhost:5173")
    monkeypatch.setenv("SIGV4_PROXY_ALLOWED_HOSTS", '["sigv4-proxy"]')
    settings = settings_from(parse_args(["--upstream", "http://127.0.0.1:9"]))
    assert settings.cors_origins == ["http://localhost:3000", "http://localhost:5173"]
    assert settings.allowed_hosts == ["sigv4-proxy"]


@pytest.mark.parametrize("origin", ["*", "null", "localhost:3000", "http://localhost:3000/app"])
def test_cors_origin_that_would_open_the_door_is_a_config_error(origin: str) -> None:
    with pytest.raises(ConfigError, match="cors_origins"):
        settings_from(parse_args(["--upstream", "http://127.0.0.1:9", "--cors-origin", origin]))


def test_toml_config(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(
        'upstream = "http://127.0.0.1:9"\n'
        'cors_origins = ["http://localhost:3000"]\n'
        'allowed_hosts = ["sigv4-proxy"]\n'
        "cors_max_age = 30\n"
        f'client_token = "{TOKEN}"\n'
    )
    settings = settings_from(parse_args(["--config", str(config), "--cors-origin", "http://localhost:5173"]))
    assert settings.cors_origins == ["http://localhost:5173"]  # the command line wins, as for every setting
    assert settings.allowed_hosts == ["sigv4-proxy"] and settings.cors_max_age == 30
    assert settings.client_token is not None and settings.client_token.get_secret_value() == TOKEN
