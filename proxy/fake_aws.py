"""A local stand-in for CloudFront in front of an IAM-authorised API Gateway.

The demo and the tests put it behind the proxy. `FakeApiGateway` verifies every SigV4 signature
with awscrt (AWS's C runtime, independent of our signer and of botocore) and answers 403 with
API Gateway's own error bodies; `FakeCloudFront` rewrites Host and touches headers the way
CloudFront does before forwarding to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from urllib.parse import unquote_to_bytes

import aiohttp
from aiohttp import web
from awscrt import auth as crt_auth
from awscrt import http as crt_http
from yarl import URL

from proxy import canonical, signing
from proxy.headers import HOP_BY_HOP
from proxy.http_server import MAX_HEADER_FIELD, MAX_HEADERS, MAX_REQUEST_LINE, ProxyServer

_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<signed>[a-z0-9;_.-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
MAX_SKEW = timedelta(minutes=5)
Handler = Callable[[web.BaseRequest, bytes], Awaitable[web.StreamResponse]]


@dataclass
class Key:
    """A key the fake API Gateway accepts; temporary ones carry a token and may expire."""

    credentials: signing.Credentials
    expires: datetime | None = None


@dataclass
class FakeApiGateway:
    """Verifies SigV4 like API Gateway with IAM auth, then hands the request to `handler`."""

    keys: dict[str, Key]
    region: str
    service: str = "execute-api"
    handler: Handler | None = None
    clock_offset: timedelta = timedelta(0)
    seen: list[dict[str, object]] = field(default_factory=list)  # what passed verification
    denied_keys: set[str] = field(default_factory=set)  # valid signatures IAM then denies
    account: str = "123456789012"

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        response = await self.answer(request)
        if self.clock_offset and not response.prepared:
            # The Date header is AWS's clock: a skewed gateway must show its skewed time.
            response.headers["Date"] = format_datetime(datetime.now(timezone.utc) + self.clock_offset, usegmt=True)
        return response

    async def answer(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.content.read()  # whole body, past BaseRequest.read()'s 1 MiB cap
        refusal = await self.verify(request, body) or self.authorize(request)
        if refusal is not None:
            return refusal
        self.seen.append(describe_request(request, body))
        if self.handler is not None:
            return await self.handler(request, body)
        return web.json_response(describe_request(request, body))

    def authorize(self, request: web.BaseRequest) -> web.Response | None:
        """IAM after authentication: a denied key gets API Gateway's AccessDeniedException."""
        match = _AUTH.match(request.headers.get("Authorization", ""))
        if match is None or match["key"] not in self.denied_keys:
            return None
        api = request.host.split(".")[0]
        stage, _, rest = request.path.lstrip("/").partition("/")
        resource = f"arn:aws:execute-api:{self.region}:{self.account}:{api}/{stage}/{request.method}/{rest}"
        principal = f"arn:aws:sts::{self.account}:assumed-role/sigv4-proxy-test/test-session"
        message = f"User: {principal} is not authorized to perform: execute-api:Invoke on resource: {resource}"
        return deny("AccessDeniedException", message, field_name="Message")

    async def verify(self, request: web.BaseRequest, body: bytes) -> web.Response | None:
        authorization = request.headers.get("Authorization")
        if not authorization:
            return deny("MissingAuthenticationTokenException", "Missing Authentication Token")
        match = _AUTH.match(authorization)
        amz_date = request.headers.get("X-Amz-Date", "")
        if not match or not re.fullmatch(r"\d{8}T\d{6}Z", amz_date):
            return deny("IncompleteSignatureException", f"Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. Authorization={authorization[:40]}")
        key = self.keys.get(match["key"])
        if key is None:
            return deny("UnrecognizedClientException", "The security token included in the request is invalid.")
        if match["region"] != self.region:
            return deny("InvalidSignatureException", "Credential should be scoped to a valid region. ")
        if match["service"] != self.service:
            return deny("InvalidSignatureException", f"Credential should be scoped to correct service: '{self.service}'. ")
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        now = datetime.now(timezone.utc) + self.clock_offset
        if signed_at < now - MAX_SKEW:
            return deny("InvalidSignatureException", f"Signature expired: {amz_date} is now earlier than {signing.amz_date(now - MAX_SKEW)} ({signing.amz_date(now)} - 5 min.)")
        if signed_at > now + MAX_SKEW:
            return deny("InvalidSignatureException", f"Signature not yet current: {amz_date} is still later than {signing.amz_date(now + MAX_SKEW)} ({signing.amz_date(now)} + 5 min.)")
        token = request.headers.get("X-Amz-Security-Token")
        if key.credentials.token is not None and token != key.credentials.token:
            return deny("UnrecognizedClientException", "The security token included in the request is invalid.")
        if key.expires is not None and now >= key.expires:
            return deny("ExpiredTokenException", "The security token included in the request is expired")
        signed = match["signed"].split(";")
        expected = await crt_signature(request, body, key.credentials, signed, signed_at, self.region, self.service)
        if expected != match["signature"]:
            return deny(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. Check your "
                "AWS Secret Access Key and signing method. Consult the service documentation for details.\n\n"
                f"The Canonical String for this request should have been\n'{server_canonical(request, body, signed)}'\n\n",
            )
        return None


def deny(error_type: str, message: str, field_name: str = "message") -> web.Response:
    """API Gateway's 403: a JSON `message` (`Message` for IAM denials) and the x-amzn-ErrorType header."""
    return web.json_response(
        {field_name: message},
        status=403,
        headers={"x-amzn-ErrorType": error_type, "x-amzn-RequestId": secrets.token_hex(16)},
    )


async def crt_signature(
    request: web.BaseRequest,
    body: bytes,
    credentials: signing.Credentials,
    signed_headers: list[str],
    signed_at: datetime,
    region: str,
    service: str,
) -> str:
    """The signature awscrt computes for the request as this server received it."""
    wanted = set(signed_headers)
    # awscrt adds X-Amz-Date and X-Amz-Security-Token itself, from the config and credentials.
    headers = [
        (n, v)
        for n, v in request.headers.items()
        if n.lower() in wanted and n.lower() not in ("x-amz-date", "x-amz-security-token")
    ]
    # awscrt's URI parser rejects an origin-form path with ":/" in it ("/a:/b"); in absolute form
    # it parses, and the canonical request is the same (the host comes from the Host header).
    crt_request = crt_http.HttpRequest(request.method, "http://origin" + request.raw_path, crt_http.HttpHeaders(headers))
    provider = crt_auth.AwsCredentialsProvider.new_static(
        credentials.access_key,
        credentials.secret_key,
        credentials.token if "x-amz-security-token" in wanted else None,
    )
    config = crt_auth.AwsSigningConfig(
        algorithm=crt_auth.AwsSigningAlgorithm.V4,
        signature_type=crt_auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
        credentials_provider=provider,
        region=region,
        service=service,
        date=signed_at,
        should_sign_header=lambda name: name.lower() in wanted,
        use_double_uri_encode=service != "s3",
        should_normalize_uri_path=service != "s3",
        signed_body_value=hashlib.sha256(body).hexdigest(),
        signed_body_header_type=crt_auth.AwsSignedBodyHeaderType.NONE,
    )
    signed = await asyncio.wrap_future(crt_auth.aws_sign_request(crt_request, config))
    authorization = signed.headers.get("Authorization") or ""
    return authorization.rpartition("Signature=")[2]


def server_canonical(request: web.BaseRequest, body: bytes, signed_headers: list[str]) -> str:
    """The canonical request as the server sees it, for the 403 message (as API Gateway shows it)."""
    path, _, query = request.raw_path.partition("?")
    headers = [(n.lower(), v) for n, v in request.headers.items() if n.lower() in signed_headers]
    return signing.canonical_request(
        request.method,
        canonical.canonical_uri(canonical.wire_path(path)),
        canonical.canonical_query(canonical.wire_query(query, plus_is_space=False)),
        headers,
        hashlib.sha256(body).hexdigest(),
    )


def decoded_params(query: str) -> list[list[str]]:
    """Query parameters as an origin decodes them (names without "=" get an empty value)."""
    params = []
    for part in filter(None, query.split("&")):
        name, _, value = part.partition("=")
        params.append([unquote_to_bytes(name).decode("utf-8", "backslashreplace"),
                       unquote_to_bytes(value).decode("utf-8", "backslashreplace")])
    return params


def describe_request(request: web.BaseRequest, body: bytes) -> dict[str, object]:
    path, _, query = request.raw_path.partition("?")
    return {
        "method": request.method,
        "raw_path": path,
        "path": unquote_to_bytes(path).decode("utf-8", "backslashreplace"),
        "raw_query": query,
        "params": decoded_params(query),
        "headers": [[n, v] for n, v in request.headers.items()],
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_length": len(body),
    }


@dataclass
class FakeCloudFront:
    """Forwards to the origin the way a CloudFront behaviour with AllViewerExceptHostHeader does.

    The knobs break it the ways real distributions are misconfigured (forwarding the viewer's Host,
    dropping Authorization or the query string, an origin path).
    """

    origin: URL
    origin_host: str
    session: aiohttp.ClientSession
    forward_viewer_host: bool = False
    drop_headers: tuple[str, ...] = ()
    drop_query: bool = False
    origin_path: str = ""
    connections: set[object] = field(default_factory=set)  # viewer connections seen (peer addresses)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.transport is not None:
            self.connections.add(request.transport.get_extra_info("peername"))
        path, _, query = request.raw_path.partition("?")
        target = self.origin_path + path + ("?" + query if query and not self.drop_query else "")
        upstream = await self.session.request(
            request.method,
            URL(str(self.origin).rstrip("/") + target, encoded=True),
            headers=self.origin_headers(request),
            data=request.content if request.body_exists else None,
            allow_redirects=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        )
        headers = [(n, v) for n, v in upstream.headers.items() if n.lower() not in HOP_BY_HOP]
        headers += [("Via", "1.1 fake.cloudfront.net (CloudFront)"), ("X-Cache", "Miss from cloudfront")]
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the viewer went away mid-stream (a client hung up): nothing left to send it
        finally:
            upstream.close()
        return response

    def origin_headers(self, request: web.BaseRequest) -> list[tuple[str, str]]:
        dropped = HOP_BY_HOP | {"host", "user-agent", "via", "accept-encoding", "expect"}
        dropped |= {h.lower() for h in self.drop_headers}
        headers = [(n, v) for n, v in request.headers.items() if n.lower() not in dropped]
        peer = request.remote or "127.0.0.1"
        forwarded_for = request.headers.get("X-Forwarded-For")
        headers = [(n, v) for n, v in headers if n.lower() != "x-forwarded-for"]
        headers += [
            ("Host", request.host if self.forward_viewer_host else self.origin_host),
            ("User-Agent", "Amazon CloudFront"),
            ("Via", "1.1 " + secrets.token_hex(16) + ".cloudfront.net (CloudFront)"),
            ("X-Amz-Cf-Id", secrets.token_urlsafe(40)),
            ("X-Forwarded-For", f"{forwarded_for}, {peer}" if forwarded_for else peer),
        ]
        # CloudFront normalizes Accept-Encoding to gzip (and br) when compression is enabled.
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers.append(("Accept-Encoding", "gzip"))
        return headers


@dataclass
class Listening:
    """A low-level aiohttp server on 127.0.0.1 and its URL."""

    server: asyncio.AbstractServer
    handler: web.Server
    url: URL

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        await self.handler.shutdown(1.0)


async def listen(handle: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], port: int = 0) -> Listening:
    # Whatever the proxy accepts, with the headers it and the CloudFront stand-in add, gets through:
    # a stand-in that refused it (aiohttp's 8190-byte request line, 128 headers) would answer in
    # plain text with a traceback, not as the AWS it stands for.
    handler = ProxyServer(
        handle, access_log=None, handler_cancellation=True, max_line_size=4 * MAX_REQUEST_LINE,
        max_field_size=4 * MAX_HEADER_FIELD, max_headers=2 * MAX_HEADERS,
    )
    server = await asyncio.get_running_loop().create_server(handler, "127.0.0.1", port)
    bound = server.sockets[0].getsockname()[1]
    return Listening(server, handler, URL(f"http://127.0.0.1:{bound}"))
