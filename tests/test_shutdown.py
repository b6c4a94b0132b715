"""Graceful shutdown of a real proxy process (what `docker stop` and Ctrl-C do to a sidecar).

On SIGTERM/SIGINT the proxy stops accepting, lets in-flight requests and streams finish for up to
--shutdown-grace seconds, cuts whatever is left, and exits 0; a second signal exits at once.
The upstream is the verifying CloudFront + API Gateway stand-in, in this test process.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from yarl import URL

from conftest import CREDENTIALS, REGION, SIGN_HOST
from origin import origin
from proxy.cli import parse_args, settings_from
from proxy.config import ConfigError
from proxy.fake_aws import FakeApiGateway, FakeCloudFront, Key, listen
from proxy_process import ProxyProcess, isolated_env, spawn


@dataclass
class Upstream:
    url: URL
    gateway: FakeApiGateway


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    gateway = FakeApiGateway({CREDENTIALS.access_key: Key(CREDENTIALS)}, REGION, handler=origin)
    gateway_server = await listen(gateway.handle)
    session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
    cloudfront = await listen(FakeCloudFront(gateway_server.url, SIGN_HOST, session).handle)
    yield Upstream(cloudfront.url, gateway)
    await cloudfront.close()
    await session.close()
    await gateway_server.close()


@pytest.fixture
async def start_proxy(upstream: Upstream) -> AsyncIterator:
    started: list[ProxyProcess] = []

    async def start(*options: str) -> ProxyProcess:
        proxy = await spawn(
            "run", "--listen", "127.0.0.1:0", "--upstream", str(upstream.url), "--sign-host", SIGN_HOST, *options,
            env=isolated_env(CREDENTIALS),
        )
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def read_event(response: aiohttp.ClientResponse) -> bytes:
    return await response.content.readuntil(b"\n\n")


async def wait_seen(upstream: Upstream, path: str, within: float = 5.0) -> None:
    """Until the gateway has verified a request for `path`: it is in flight inside the proxy."""
    async with asyncio.timeout(within):
        while not any(seen["raw_path"] == path for seen in upstream.gateway.seen):
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_in_flight_stream_and_request_finish_new_connections_refused_exit_0(
    start_proxy, upstream: Upstream, client: aiohttp.ClientSession, sig: signal.Signals
) -> None:
    proxy = await start_proxy("--shutdown-grace", "10")
    stream = await client.get(proxy.url / "prod" / "events", params={"count": "8", "interval": "0.2"})
    assert stream.status == 200
    first = await read_event(stream)
    slow = asyncio.create_task(client.get(proxy.url / "prod" / "slow", params={"delay": "1"}))
    await wait_seen(upstream, "/prod/slow")

    proxy.send(sig)
    await proxy.wait_refusing()
    assert not stream.content.at_eof(), "the stream must still be running when new connections are refused"

    rest = await stream.read()  # raises ClientPayloadError if the proxy cut the chunked body
    events = [first, *(e + b"\n\n" for e in rest.split(b"\n\n") if e)]
    assert [e.split(b"\n", 1)[0] for e in events] == [f"id: {n}".encode() for n in range(8)]
    slow_response = await slow
    assert slow_response.status == 200 and await slow_response.json() == {"slept": True}
    stream_done = time.monotonic()

    assert await proxy.exit_code(within=5) == 0
    # Nothing was left in flight, so the proxy exits at once, not at the end of the 10 s grace.
    assert time.monotonic() - stream_done < 2.0
    assert any("shutting down" in line for line in proxy.log)


async def test_stream_longer_than_grace_is_cut_at_the_grace_period(
    start_proxy, client: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy("--shutdown-grace", "2")
    stream = await client.get(proxy.url / "prod" / "events", params={"count": "100", "interval": "0.1"})
    await read_event(stream)

    signalled = proxy.send(signal.SIGTERM)
    with pytest.raises(aiohttp.ClientPayloadError):
        await stream.read()  # the stream ends without its terminating chunk: visibly truncated
    assert await proxy.exit_code(within=10) == 0
    took = time.monotonic() - signalled
    # Not sooner (the stream had its grace), not much later (aiohttp alone would take twice as long).
    assert 1.9 <= took < 3.5, f"exited {took:.2f}s after SIGTERM with a 2 s grace period"


async def test_zero_grace_cuts_at_once(start_proxy, client: aiohttp.ClientSession) -> None:
    proxy = await start_proxy("--shutdown-grace", "0")
    stream = await client.get(proxy.url / "prod" / "events", params={"count": "100", "interval": "0.1"})
    await read_event(stream)

    signalled = proxy.send(signal.SIGTERM)
    with pytest.raises(aiohttp.ClientPayloadError):
        await stream.read()
    assert await proxy.exit_code(within=10) == 0
    assert time.monotonic() - signalled < 2.0


async def test_idle_keep_alive_connections_do_not_delay_exit(start_proxy) -> None:
    proxy = await start_proxy("--shutdown-grace", "10")
    # An app's HTTP client keeps its connection to the sidecar open between requests.
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /prod/items HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)

    signalled = proxy.send(signal.SIGTERM)
    assert await proxy.exit_code(within=10) == 0
    assert time.monotonic() - signalled < 2.0
    assert await reader.read() == b""  # the proxy closed the idle connection itself
    writer.close()


async def test_second_signal_exits_at_once(start_proxy, client: aiohttp.ClientSession) -> None:
    proxy = await start_proxy("--shutdown-grace", "30")
    stream = await client.get(proxy.url / "prod" / "events", params={"count": "100", "interval": "0.1"})
    await read_event(stream)

    proxy.send(signal.SIGTERM)
    await proxy.wait_refusing()
    second = proxy.send(signal.SIGINT)
    # Exit status 128 + signal number, the shell's convention for "stopped by a signal": the drain
    # was cut short, so a supervisor must not read this as a clean exit.
    assert await proxy.exit_code(within=5) == 128 + signal.SIGINT
    assert time.monotonic() - second < 2.0
    with pytest.raises(aiohttp.ClientPayloadError):
        await stream.read()


async def test_sigterm_on_the_listening_line_is_already_graceful(start_proxy) -> None:
    """The listening line is the readiness signal: a stop sent the moment it appears must not meet
    the default action of SIGTERM (death, status -15). A race, so several tries."""
    for _ in range(5):
        proxy = await start_proxy()
        proxy.send(signal.SIGTERM)
        assert await proxy.exit_code(within=10) == 0, "".join(proxy.log)


async def test_demo_finishes_its_event_stream_after_sigterm(client: aiohttp.ClientSession) -> None:
    proxy = await spawn("demo", "--listen", "127.0.0.1:0", env=isolated_env())
    try:
        stream = await client.get(proxy.url / "prod" / "events")
        assert stream.status == 200
        await read_event(stream)
        proxy.send(signal.SIGTERM)
        await proxy.wait_refusing()
        rest = await stream.read()
        assert rest.count(b"data: event ") == 4 and b"event 5 of 5" in rest
        assert await proxy.exit_code(within=5) == 0
    finally:
        await proxy.stop()


def test_shutdown_grace_setting_from_cli_env_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGV4_PROXY_SHUTDOWN_GRACE", raising=False)
    assert settings_from(parse_args([])).shutdown_grace == 10.0
    monkeypatch.setenv("SIGV4_PROXY_SHUTDOWN_GRACE", "7.5")
    assert settings_from(parse_args([])).shutdown_grace == 7.5
    assert settings_from(parse_args(["--shutdown-grace", "3"])).shutdown_grace == 3.0  # CLI beats env
    with pytest.raises(ConfigError, match="shutdown_grace"):
        settings_from(parse_args(["--shutdown-grace", "-1"]))
