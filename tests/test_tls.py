"""Upstream TLS: verified against the trust store or --ca-bundle; --insecure is a loud opt-out."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import CREDENTIALS
from proxy.config import Settings, resolve_routes
from proxy.credentials import StaticCredentialSource
from proxy.server import start_proxy


def self_signed(tmp_path: Path, dns_names: Sequence[str] = ()) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and `dns_names`, e.g. upstream.test behind an outbound proxy)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), *(x509.DNSName(name) for name in dns_names)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
async def tls_upstream(tmp_path: Path):
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def hello(request: web.BaseRequest) -> web.Response:
        return web.json_response({"tls": True, "signed": request.headers.get("Authorization", "")[:16]})

    handler = web.Server(hello)
    server = await asyncio.get_running_loop().create_server(handler, "127.0.0.1", 0, ssl=context)
    yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", cert
    server.close()
    await server.wait_closed()


async def status_through(upstream: str, **options: object) -> tuple[int, dict]:
    settings = Settings(listen="127.0.0.1:0", upstream=upstream, region="us-east-1", service="execute-api", **options)
    proxy = await start_proxy(settings, resolve_routes(settings), lambda _r: StaticCredentialSource(CREDENTIALS))
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{proxy.port}/x") as resp:
                return resp.status, await resp.json()
    finally:
        await proxy.close(0.1)


async def test_unknown_ca_is_refused_with_a_hint(tls_upstream: tuple[str, Path]) -> None:
    status, body = await status_through(tls_upstream[0])
    assert status == 502 and body["error"] == "upstream TLS error" and "--ca-bundle" in body["detail"]


async def test_ca_bundle_option_and_aws_ca_bundle_env(tls_upstream: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    upstream, cert = tls_upstream
    assert await status_through(upstream, ca_bundle=cert) == (200, {"tls": True, "signed": "AWS4-HMAC-SHA256"})
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    assert (await status_through(upstream))[0] == 200


async def test_insecure_skips_verification_and_warns(tls_upstream: tuple[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    assert (await status_through(tls_upstream[0], insecure=True))[0] == 200
    assert "NOT verified" in caplog.text


async def test_tls_handshake_that_never_completes_is_a_504_within_the_connect_timeout() -> None:
    """An upstream that accepts TCP and then says nothing: the handshake counts against
    --connect-timeout, and the client hears 504 naming that option instead of waiting --timeout."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # kept open, never answered

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        started = asyncio.get_running_loop().time()
        status, body = await status_through(
            f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", connect_timeout=0.5, timeout=30
        )
        assert asyncio.get_running_loop().time() - started < 5
        assert status == 504 and body["error"] == "upstream timeout" and "--connect-timeout" in body["detail"]
        assert accepted, "the proxy never reached the upstream"
    finally:
        for writer in accepted:
            writer.close()
        server.close()


async def test_https_to_a_plain_http_upstream_says_so_not_ca_bundle() -> None:
    async def plain(request: web.BaseRequest) -> web.Response:
        return web.Response(text="plain")

    server = await asyncio.get_running_loop().create_server(web.Server(plain), "127.0.0.1", 0)
    try:
        status, body = await status_through(f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        assert status == 502 and body["error"] == "upstream TLS error"
        assert "plain HTTP" in body["detail"] and "--ca-bundle" not in body["detail"]
    finally:
        server.close()
