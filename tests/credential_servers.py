"""Real credential endpoints on 127.0.0.1 for the credential tests.

An `Issuer` hands out temporary credentials and registers each set with the verifying gateway
(which rejects a set once it has expired), the way AWS knows every key STS or IMDS issued. It
serves them the way AWS's providers do: the ECS/EKS container endpoint, EC2's IMDSv2, and a URL a
credential_process helper reads. `StsTap` sits between botocore and moto's STS server: it records
each call (parameters and timing), can make STS slow, and registers what moto issued.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web

from conftest import SIGN_HOST, Stack
from proxy.config import Route, Settings, resolve_routes
from proxy.fake_aws import Key, Listening, listen

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
StartEndpoint = Callable[[Handler], Awaitable[Listening]]
from proxy.signing import Credentials


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Issuer:
    keys: dict[str, Key]
    lifetime: float = 60.0
    delay: float = 0.0  # seconds before each answer: a slow endpoint
    failing: bool = False  # answer 500: the endpoint is broken
    issued: list[tuple[Credentials, datetime]] = field(default_factory=list)
    fetches: int = 0  # credential answers asked for

    def issue(self) -> tuple[Credentials, datetime]:
        creds = Credentials("ASIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30), secrets.token_urlsafe(60))
        # Whole seconds: the wire formats carry no fraction, and botocore must see what we enforce.
        expires = (datetime.now(timezone.utc) + timedelta(seconds=self.lifetime)).replace(microsecond=0)
        self.keys[creds.access_key] = Key(creds, expires)
        self.issued.append((creds, expires))
        return creds, expires

    def current(self) -> tuple[Credentials, datetime]:
        """Like IMDS and the container agent: the same set until it is half-way to expiry."""
        if self.issued:
            creds, expires = self.issued[-1]
            if (expires - datetime.now(timezone.utc)).total_seconds() > self.lifetime / 2:
                return creds, expires
        return self.issue()

    async def _answer(self) -> tuple[Credentials, datetime] | None:
        self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return None if self.failing else self.current()

    async def container(self, request: web.BaseRequest) -> web.StreamResponse:
        answer = await self._answer()
        if answer is None:
            return web.json_response({"message": "agent unavailable"}, status=500)
        creds, expires = answer
        return web.json_response({"AccessKeyId": creds.access_key, "SecretAccessKey": creds.secret_key,
                                  "Token": creds.token, "Expiration": iso(expires)})

    async def process(self, request: web.BaseRequest) -> web.StreamResponse:
        answer = await self._answer()
        if answer is None:
            return web.Response(status=500, text="helper failed")
        creds, expires = self.issue()  # a credential_process helper fetches a new set each run
        return web.json_response({"Version": 1, "AccessKeyId": creds.access_key, "SecretAccessKey": creds.secret_key,
                                  "SessionToken": creds.token, "Expiration": iso(expires)})

    async def imds(self, request: web.BaseRequest) -> web.StreamResponse:
        """IMDSv2: a PUT for a session token, then the role's name, then its credentials."""
        if request.method == "PUT" and request.path == "/latest/api/token":
            return web.Response(text="imds-session-token")
        if request.headers.get("X-aws-ec2-metadata-token") != "imds-session-token":
            return web.Response(status=401)
        if request.path == "/latest/meta-data/iam/security-credentials/":
            return web.Response(text="app-role")
        if request.path == "/latest/meta-data/iam/security-credentials/app-role":
            answer = await self._answer()
            if answer is None:
                return web.Response(status=500)
            creds, expires = answer
            return web.json_response({"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": creds.access_key,
                                      "SecretAccessKey": creds.secret_key, "Token": creds.token,
                                      "Expiration": iso(expires), "LastUpdated": iso(datetime.now(timezone.utc))})
        return web.Response(status=404)


@dataclass
class SsoPortal:
    """IAM Identity Center's portal API: role credentials for a valid `aws sso login` token."""

    issuer: Issuer
    valid_tokens: set[str] = field(default_factory=set)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path != "/federation/credentials":
            return web.Response(status=404)
        if request.headers.get("x-amz-sso_bearer_token") not in self.valid_tokens:
            return web.json_response({"message": "Session token not found or invalid"}, status=401,
                                     headers={"x-amzn-ErrorType": "UnauthorizedException"})
        creds, expires = self.issuer.issue()
        return web.json_response({"roleCredentials": {
            "accessKeyId": creds.access_key, "secretAccessKey": creds.secret_key, "sessionToken": creds.token,
            "expiration": int(expires.timestamp() * 1000)}})


def sso_login(cache: Path, start_url: str, token: str) -> None:
    """What `aws sso login` leaves behind: the token in ~/.aws/sso/cache/<sha1(start url)>.json."""
    cache.mkdir(parents=True, exist_ok=True)
    expires = iso(datetime.now(timezone.utc) + timedelta(hours=8))
    (cache / f"{hashlib.sha1(start_url.encode()).hexdigest()}.json").write_text(
        json.dumps({"startUrl": start_url, "region": "us-east-1", "accessToken": token, "expiresAt": expires}))


@dataclass
class StsTap:
    """Forwards STS calls to moto's server; records them; optionally slow."""

    moto_url: str
    keys: dict[str, Key]
    delay: float = 0.0
    calls: list[dict[str, str]] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)  # (started, answered), monotonic

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        body = await request.read()
        self.calls.append(dict(parse_qsl(body.decode())))
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with aiohttp.request("POST", self.moto_url + request.raw_path, data=body, headers=headers) as upstream:
            text = await upstream.text()
        found = {name: re.search(f"<{name}>([^<]+)</{name}>", text) for name in
                 ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")}
        if all(found.values()):
            values = {name: m.group(1) for name, m in found.items() if m}
            creds = Credentials(values["AccessKeyId"], values["SecretAccessKey"], values["SessionToken"])
            expires = datetime.fromisoformat(values["Expiration"].replace("Z", "+00:00"))
            self.keys[creds.access_key] = Key(creds, expires)
        self.windows.append((started, time.monotonic()))
        return web.Response(status=upstream.status, body=text.encode(), content_type="text/xml")


def closed_port() -> int:
    """A port nothing listens on (bound then released): connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = closed_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto's server did not start")


@dataclass
class AwsFiles:
    config: Path
    credentials: Path
    home: Path


@pytest.fixture
def aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AwsFiles:
    """A clean AWS environment: no AWS_* from the machine, empty files in a temp dir, and IMDS off
    (so nothing ever talks to 169.254.169.254); a test turns on only the sources it exercises."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    files = AwsFiles(tmp_path / "config", tmp_path / "credentials", tmp_path)
    files.config.write_text("")
    files.credentials.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(files.config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(files.credentials))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return files


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    proc, url = start_moto()
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
async def endpoints() -> AsyncIterator[StartEndpoint]:
    """Starts credential endpoints; request it before make_stack so the proxy (and its refresher)
    stops first, and no refresh is left calling an endpoint that is already gone."""
    started: list[Listening] = []

    async def start(handle: Handler) -> Listening:
        started.append(await listen(handle))
        return started[-1]

    yield start
    for server in reversed(started):
        await server.close()


@pytest.fixture
async def hanging_port() -> AsyncIterator[int]:
    """A metadata endpoint that accepts connections and never answers."""
    release = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    release.set()
    server.close()
    await server.wait_closed()


_KEY_ID = re.compile(r"Credential=([^/]+)/")


def route_for(**fields: Any) -> Route:
    """The route a user's settings make, with fields (a short STS duration) set past validation."""
    route = resolve_routes(Settings(upstream="http://127.0.0.1:9", sign_host=SIGN_HOST))[0]
    return dataclasses.replace(route, **fields)


async def timed_get(client: aiohttp.ClientSession, stack: Stack) -> tuple[float, float, int, str, datetime]:
    """(started, seconds, status, access key the gateway saw, wall-clock start) for one request."""
    wall, started = datetime.now(timezone.utc), time.monotonic()
    async with client.get(stack.url / "prod" / "items") as resp:
        payload = await resp.json()
        status = resp.status
    key = ""
    if status == 200:
        auth = dict((n.lower(), v) for n, v in payload["headers"])["authorization"]
        key = _KEY_ID.search(auth).group(1)  # type: ignore[union-attr]
    return started, time.monotonic() - started, status, key, wall


def seconds_until(moment: datetime) -> float:
    return (moment - datetime.now(timezone.utc)).total_seconds()
