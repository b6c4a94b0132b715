"""Upstreams reached through an outbound HTTP proxy named by HTTPS_PROXY / HTTP_PROXY, as in a
corporate network: a CONNECT tunnel for https, absolute-form requests for http. Real servers on
127.0.0.1: a forward proxy (tests/forward_proxy.py) that alone knows where upstream.test is, raw
upstreams (tests/raw_upstream.py), and the proxy itself, in-process.

Every test here watches the event loop's resolver: looking up a *.test name fails the lookup (and
never reaches DNS), so the client can only get to upstream.test through the forward proxy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from multidict import CIMultiDict

from conftest import CREDENTIALS, SIGN_HOST, Stack
from forward_proxy import ForwardProxy, StartForwardProxy, forward_proxy  # noqa: F401 (a fixture)
from proxy.check import run_check
from proxy.config import Settings, resolve_routes
from proxy.credentials import StaticCredentialSource
from proxy.outbound_proxy import OutboundProxies
from proxy.server import RunningProxy, describe_routes, start_proxy
from proxy.upstream import ConnectTimeout, Origin, UpstreamClient, UpstreamResponse
from raw_upstream import OK, Conn, RawUpstream, Serve, answering, serve  # noqa: F401 (serve: a fixture)
from test_tls import self_signed

pytestmark = pytest.mark.timeout(15)

USER, PASSWORD = "corp\\alice", "p@ss:w0rd/1"  # both need percent-encoding in a URL
USERINFO = "corp%5Calice:p%40ss%3Aw0rd%2F1"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def guard_lookups(loop: asyncio.AbstractEventLoop, resolve_test_names: bool = False) -> list[str]:
    """Record every name the loop resolves. A *.test name is refused (nothing asks DNS), or with
    `resolve_test_names` answered with 127.0.0.1, as a resolver would for a name without a proxy."""
    looked_up: list[str] = []
    real = loop.getaddrinfo

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(str(host))
        if str(host).endswith(".test"):
            if not resolve_test_names:
                raise socket.gaierror(socket.EAI_NONAME, "the client looked up a name only the proxy knows")
            host = "127.0.0.1"
        return await real(host, port, *args, **kwargs)

    loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
    return looked_up


@pytest.fixture(autouse=True)
async def looked_up() -> list[str]:
    return guard_lookups(asyncio.get_running_loop())


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A certificate for upstream.test, and a server context that presents it."""
    cert, key = self_signed(tmp_path, dns_names=["upstream.test"])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return cert, server


def client_through(proxies: dict[str, str], cert: Path | None = None, connect_timeout: float = 2.0) -> UpstreamClient:
    tls = ssl.create_default_context(cafile=str(cert) if cert else None)
    return UpstreamClient(tls, connect_timeout, OutboundProxies.from_environ(proxies))


async def get(client: UpstreamClient, origin: str, target: str = "/items?q=1") -> tuple[UpstreamResponse, bytes]:
    response = await client.request(Origin.parse(origin), "GET", target, CIMultiDict({"X-Test": "1"}), None, 0, 3.0)
    return response, await response.read(3.0)


@contextlib.asynccontextmanager
async def proxy_to(upstream: str, **options: object) -> AsyncIterator[RunningProxy]:
    settings = Settings(listen="127.0.0.1:0", upstream=upstream, sign_host="x.execute-api.us-east-1.amazonaws.com", **options)
    running = await start_proxy(settings, resolve_routes(settings), lambda _route: StaticCredentialSource(CREDENTIALS))
    try:
        yield running
    finally:
        await running.close(0.1)


# -- HTTPS: a CONNECT tunnel, TLS through it --------------------------------------------------------


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_https_goes_through_a_connect_tunnel_byte_for_byte_and_the_tunnel_is_reused(
    certificate: tuple[Path, ssl.SSLContext], loop_kind: str
) -> None:
    """The proxy runs on uvloop: the CONNECT exchange on the raw socket, then TLS over it, on both
    loops. The upstream's bytes arrive unchanged, and a second request reuses the tunnel."""
    cert, server_tls = certificate
    body = hashlib.shake_256(loop_kind.encode()).digest(300_000)  # several reads, no repeating pattern
    answer = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nX-From: upstream\r\n\r\n".encode() + body

    async def scenario() -> None:
        looked_up = guard_lookups(asyncio.get_running_loop())
        upstream = await RawUpstream(answering(answer), server_tls).start()
        outbound = await ForwardProxy().start()
        client = client_through({"HTTPS_PROXY": outbound.url()}, cert)
        target = f"upstream.test:{upstream.port}"
        try:
            origin = f"https://{target}"
            for _ in range(2):
                response, received = await get(client, origin)
                assert (response.status, response.headers["X-From"]) == (200, "upstream")
                assert received == body
        finally:
            await client.close()
            await upstream.close()
            await outbound.close()
        assert outbound.heads == [f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"]
        assert (outbound.connections, upstream.connections) == (1, 1)
        # Inside the tunnel: origin form, the Host header the upstream expects, no Proxy-* header.
        assert [r.head.split(b"\r\n")[0] for r in upstream.requests] == [b"GET /items?q=1 HTTP/1.1"] * 2
        assert upstream.requests[0].header("Host") == target
        assert upstream.requests[0].header("Proxy-Authorization") is None
        assert "upstream.test" not in looked_up and "127.0.0.1" in looked_up  # only the proxy's address

    factory = uvloop.new_event_loop if loop_kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())


async def test_https_credentials_go_to_the_proxy_only(
    serve: Serve, forward_proxy: StartForwardProxy, certificate: tuple[Path, ssl.SSLContext]
) -> None:
    cert, server_tls = certificate
    upstream = await serve(answering(OK), tls=server_tls)
    outbound = await forward_proxy(credentials=(USER, PASSWORD))
    client = client_through({"HTTPS_PROXY": outbound.url(USERINFO)}, cert)
    try:
        assert (await get(client, f"https://upstream.test:{upstream.port}"))[1] == b"ok"
    finally:
        await client.close()
    assert outbound.authorizations == [BASIC]
    assert upstream.requests[0].header("Proxy-Authorization") is None  # never inside the tunnel


async def test_through_the_proxy_signed_and_logged_without_the_proxys_credentials(
    serve: Serve, forward_proxy: StartForwardProxy, certificate: tuple[Path, ssl.SSLContext],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, client: aiohttp.ClientSession,
) -> None:
    cert, server_tls = certificate
    upstream = await serve(answering(OK), tls=server_tls)
    outbound = await forward_proxy(credentials=(USER, PASSWORD))
    monkeypatch.setenv("HTTPS_PROXY", outbound.url(USERINFO))
    caplog.set_level(logging.DEBUG)
    async with proxy_to(f"https://upstream.test:{upstream.port}", ca_bundle=cert, debug_signing=True) as running:
        for line in describe_routes(running):
            logging.getLogger("sigv4_proxy").info("%s", line)
        async with client.get(f"http://127.0.0.1:{running.port}/items") as resp:
            assert (resp.status, await resp.read()) == (200, b"ok")
    assert upstream.requests[0].header("Authorization", ).startswith("AWS4-HMAC-SHA256 ")
    assert f"-> https://upstream.test:{upstream.port} via outbound proxy {outbound.address} (" in caplog.text
    for secret in (PASSWORD, USERINFO, "alice", BASIC.split()[1]):
        assert secret not in caplog.text


REFUSALS: list[tuple[str, dict[str, Any], str, str]] = [
    # name, forward proxy options, userinfo in HTTPS_PROXY, status line in the detail
    ("no credentials", {"credentials": (USER, PASSWORD)}, "", "407 Proxy Authentication Required"),
    ("wrong credentials", {"credentials": (USER, PASSWORD)}, "corp%5Calice:wrong-s3cret", "407 Proxy Authentication Required"),
    ("refused by policy", {"refuse": "403 Forbidden"}, "", "403 Forbidden"),
    ("its upstream unreachable", {"hosts": {}}, "", "502 Bad Gateway"),
]


@pytest.mark.parametrize(("options", "userinfo", "status"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
async def test_a_refused_connect_is_a_502_naming_the_proxy_and_its_answer(
    serve: Serve, forward_proxy: StartForwardProxy, certificate: tuple[Path, ssl.SSLContext],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, client: aiohttp.ClientSession,
    options: dict[str, Any], userinfo: str, status: str,
) -> None:
    cert, server_tls = certificate
    upstream = await serve(answering(OK), tls=server_tls)
    outbound = await forward_proxy(**options)
    monkeypatch.setenv("HTTPS_PROXY", outbound.url(userinfo))
    caplog.set_level(logging.DEBUG)
    origin = f"https://upstream.test:{upstream.port}"
    async with proxy_to(origin, ca_bundle=cert) as running:
        async with client.get(f"http://127.0.0.1:{running.port}/items") as resp:
            assert resp.status == 502
            body = await resp.json()
    assert body == {
        "error": "outbound proxy refused",
        "detail": f"{origin} was not reached: the outbound proxy {outbound.address} refused CONNECT: {status}",
    }
    assert upstream.connections == 0
    for text in (str(body), caplog.text):
        assert "s3cret" not in text and "alice" not in text


@pytest.mark.parametrize("stalls", ["the proxy never answers CONNECT", "the upstream never answers TLS"])
async def test_connect_timeout_covers_the_proxy_the_connect_and_tls(
    serve: Serve, forward_proxy: StartForwardProxy, monkeypatch: pytest.MonkeyPatch,
    client: aiohttp.ClientSession, stalls: str,
) -> None:
    async def silent(conn: Conn) -> None:
        await conn.until_client_closes(timeout=5.0)  # plain TCP: a TLS hello gets no answer

    upstream = await serve(silent)
    outbound = await forward_proxy(silent=stalls.startswith("the proxy"))
    origin = f"https://upstream.test:{upstream.port}"
    started = time.monotonic()
    one = client_through({"HTTPS_PROXY": outbound.url()}, connect_timeout=0.3)
    try:
        with pytest.raises(ConnectTimeout, match=f"no connection within 0.3s through the outbound proxy {outbound.address}"):
            await get(one, origin)
    finally:
        await one.close()
    assert time.monotonic() - started < 2.0

    monkeypatch.setenv("HTTPS_PROXY", outbound.url())
    async with proxy_to(origin, connect_timeout=0.3) as running:
        async with client.get(f"http://127.0.0.1:{running.port}/items") as resp:
            assert resp.status == 504
            detail = (await resp.json())["detail"]
    assert detail == (
        f"cannot connect to {origin}: no connection within 0.3s through the outbound proxy {outbound.address} (--connect-timeout)"
    )
    assert len(outbound.connects) == 2


async def test_an_unreachable_proxy_is_named(serve: Serve, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connecting is refused
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        async with proxy_to("https://upstream.test") as running:
            async with client.get(f"http://127.0.0.1:{running.port}/items") as resp:
                assert resp.status == 502
                detail = (await resp.json())["detail"]
    assert detail.startswith(f"cannot connect to https://upstream.test: cannot reach the outbound proxy 127.0.0.1:{port}: ")


async def test_an_upstream_certificate_refused_through_the_proxy_says_so(
    serve: Serve, forward_proxy: StartForwardProxy, certificate: tuple[Path, ssl.SSLContext],
    monkeypatch: pytest.MonkeyPatch, client: aiohttp.ClientSession,
) -> None:
    """An intercepting corporate proxy shows its own certificate: the hint is --ca-bundle."""
    _, server_tls = certificate
    upstream = await serve(answering(OK), tls=server_tls)
    outbound = await forward_proxy()
    monkeypatch.setenv("HTTPS_PROXY", outbound.url())
    async with proxy_to(f"https://upstream.test:{upstream.port}") as running:  # no --ca-bundle
        async with client.get(f"http://127.0.0.1:{running.port}/items") as resp:
            assert resp.status == 502
            body = await resp.json()
    assert body["error"] == "upstream TLS error"
    assert "(see --ca-bundle)" in body["detail"] and body["detail"].endswith(f"through the outbound proxy {outbound.address}")


# -- HTTP: absolute form --------------------------------------------------------------------------


async def test_http_goes_in_absolute_form_with_the_host_header_unchanged(
    serve: Serve, forward_proxy: StartForwardProxy
) -> None:
    upstream = await serve(answering(OK))
    outbound = await forward_proxy(credentials=(USER, PASSWORD))
    client = client_through({"HTTP_PROXY": outbound.url(USERINFO), "HTTPS_PROXY": "http://127.0.0.1:9"}, None)
    try:
        for _ in range(2):
            assert (await get(client, f"http://upstream.test:{upstream.port}"))[1] == b"ok"
    finally:
        await client.close()
    target = f"upstream.test:{upstream.port}"
    assert outbound.request_lines == [f"GET http://{target}/items?q=1 HTTP/1.1"] * 2
    assert outbound.heads[0] == (
        f"GET http://{target}/items?q=1 HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {BASIC}\r\nX-Test: 1\r\n\r\n"
    )
    assert outbound.authorizations == [BASIC, BASIC]
    assert (outbound.connections, upstream.connections) == (1, 1)  # kept alive, both hops
    assert upstream.requests[0].header("Host") == target


@pytest.mark.parametrize("userinfo", ["", "corp%5Calice:wrong-s3cret"], ids=["no credentials", "wrong credentials"])
async def test_a_407_to_a_request_in_absolute_form_is_the_proxys_refusal_not_the_upstreams_answer(
    serve: Serve, forward_proxy: StartForwardProxy, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, client: aiohttp.ClientSession, userinfo: str,
) -> None:
    upstream = await serve(answering(OK))
    outbound = await forward_proxy(credentials=(USER, PASSWORD))
    monkeypatch.setenv("HTTP_PROXY", outbound.url(userinfo))
    caplog.set_level(logging.DEBUG)
    origin = f"http://upstream.test:{upstream.port}"
    async with proxy_to(origin) as running:
        for _ in range(2):  # and the refused connection is not reused as if it were fine
            async with client.get(f"http://127.0.0.1:{running.port}/items") as resp:
                assert resp.status == 502
                body = await resp.json()
            assert body == {
                "error": "outbound proxy refused",
                "detail": f"{origin} was not reached: the outbound proxy {outbound.address} refused the request: "
                          "407 Proxy Authentication Required",
            }
    assert upstream.connections == 0
    for text in (str(body), caplog.text):
        assert "s3cret" not in text and "alice" not in text


async def test_http_default_port_stays_out_of_the_absolute_form(serve: Serve, forward_proxy: StartForwardProxy) -> None:
    """A proxy sends the target's authority as Host (RFC 9112 3.2.2): it must be the Host header
    the request carries, so `http://upstream.test/`, not `http://upstream.test:80/`."""
    upstream = await serve(answering(OK))
    outbound = await forward_proxy(hosts={"upstream.test": "127.0.0.1"})
    client = client_through({"HTTP_PROXY": outbound.url()})
    origin = Origin(secure=False, host="upstream.test", port=80, host_header="upstream.test")
    try:
        with contextlib.suppress(Exception):  # nothing listens on 127.0.0.1:80; the request line is what counts
            await client.request(origin, "GET", "/a", CIMultiDict(), None, 0, 2.0)
    finally:
        await client.close()
    assert outbound.request_lines == ["GET http://upstream.test/a HTTP/1.1"]
    assert upstream.connections == 0


async def test_a_signed_request_through_the_proxy_passes_api_gateways_verification(
    stack: Stack, forward_proxy: StartForwardProxy, monkeypatch: pytest.MonkeyPatch, client: aiohttp.ClientSession,
) -> None:
    """The signature covers the path, not the request line's form: the verifying API Gateway
    stand-in behind the CloudFront stand-in accepts what went through the proxy in absolute form."""
    outbound = await forward_proxy()
    monkeypatch.setenv("HTTP_PROXY", outbound.url())
    settings = Settings(listen="127.0.0.1:0", upstream=f"http://upstream.test:{stack.cloudfront_url.port}", sign_host=SIGN_HOST)
    running = await start_proxy(settings, resolve_routes(settings), lambda _route: StaticCredentialSource(CREDENTIALS))
    try:
        async with client.get(f"http://127.0.0.1:{running.port}/prod/items", params={"limit": "2"}) as resp:
            assert resp.status == 200, await resp.text()
    finally:
        await running.close(0.1)
    assert outbound.request_lines == [f"GET http://upstream.test:{stack.cloudfront_url.port}/prod/items?limit=2 HTTP/1.1"]


async def test_check_goes_through_the_proxy_and_says_so(
    stack: Stack, forward_proxy: StartForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbound = await forward_proxy()
    monkeypatch.setenv("HTTP_PROXY", outbound.url())
    lines: list[str] = []
    settings = Settings(upstream=f"http://upstream.test:{stack.cloudfront_url.port}", sign_host=SIGN_HOST)
    code = await run_check(settings, "/prod/items", lambda _r: StaticCredentialSource(CREDENTIALS), lines.append)
    output = "\n".join(lines)
    assert code == 0, output
    assert f"via outbound proxy {outbound.address} (signing host" in output
    assert len(outbound.request_lines) == 2  # the clock's HEAD and the probe


async def test_check_fails_when_the_proxy_refuses_the_probe(
    stack: Stack, forward_proxy: StartForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbound = await forward_proxy(credentials=(USER, PASSWORD))
    monkeypatch.setenv("HTTP_PROXY", outbound.url("corp%5Calice:wrong-s3cret"))
    lines: list[str] = []
    settings = Settings(upstream=f"http://upstream.test:{stack.cloudfront_url.port}", sign_host=SIGN_HOST)
    code = await run_check(settings, "/prod/items", lambda _r: StaticCredentialSource(CREDENTIALS), lines.append)
    output = "\n".join(lines)
    assert code == 1, output
    assert "FAILED: the probe never reached AWS: outbound proxy refused:" in output and "s3cret" not in output


# -- Who goes direct ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_upstreams_never_go_through_the_proxy(
    serve: Serve, forward_proxy: StartForwardProxy, monkeypatch: pytest.MonkeyPatch, client: aiohttp.ClientSession, host: str,
) -> None:
    upstream = await serve(answering(OK))
    outbound = await forward_proxy()
    monkeypatch.setenv("HTTP_PROXY", outbound.url())
    monkeypatch.setenv("HTTPS_PROXY", outbound.url())
    async with proxy_to(f"http://{host}:{upstream.port}") as running:
        async with client.get(f"http://127.0.0.1:{running.port}/items") as resp:
            assert (resp.status, await resp.read()) == (200, b"ok")
        assert "via outbound proxy" not in describe_routes(running)[0]
    assert outbound.connections == 0 and upstream.connections == 1


@pytest.mark.parametrize("no_proxy", ["upstream.test", ".test", "*", "other.example, UPSTREAM.test"])
async def test_no_proxy_sends_the_upstream_direct(
    serve: Serve, forward_proxy: StartForwardProxy, monkeypatch: pytest.MonkeyPatch, client: aiohttp.ClientSession,
    no_proxy: str,
) -> None:
    """Direct means our client resolves the name itself (here a resolver that knows upstream.test)."""
    looked_up = guard_lookups(asyncio.get_running_loop(), resolve_test_names=True)
    upstream = await serve(answering(OK))
    outbound = await forward_proxy()
    monkeypatch.setenv("HTTP_PROXY", outbound.url())
    monkeypatch.setenv("no_proxy", no_proxy)
    async with proxy_to(f"http://upstream.test:{upstream.port}") as running:
        async with client.get(f"http://127.0.0.1:{running.port}/items") as resp:
            assert (resp.status, await resp.read()) == (200, b"ok")
    assert outbound.connections == 0 and "upstream.test" in looked_up


async def test_the_decision_is_made_once_per_upstream(
    serve: Serve, forward_proxy: StartForwardProxy, monkeypatch: pytest.MonkeyPatch, client: aiohttp.ClientSession,
) -> None:
    """Read at start-up: changing the environment of a running proxy changes nothing."""
    upstream = await serve(answering(OK))
    outbound = await forward_proxy()
    monkeypatch.setenv("HTTP_PROXY", outbound.url())
    async with proxy_to(f"http://upstream.test:{upstream.port}") as running:
        monkeypatch.setenv("NO_PROXY", "*")
        for _ in range(2):
            async with client.get(f"http://127.0.0.1:{running.port}/items") as resp:
                assert resp.status == 200
    assert len(outbound.request_lines) == 2

