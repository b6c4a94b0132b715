"""Property tests: random paths, queries and bodies give a wire target and a signature that awscrt
(AWS's C runtime) and botocore's SigV4Auth both agree with, and the origin decodes what the
client meant. The same holds end to end through the real stack."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import datetime, timezone
from urllib.parse import unquote_to_bytes

from awscrt import auth as crt_auth
from awscrt import http as crt_http
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Stack, StackFactory
from proxy import canonical, signing
from rawhttp import get, raw_request

CREDS = signing.Credentials("AKIDPROPERTYTEST", "property-secret", "property-session-token")
HOST = "abc123.execute-api.ap-northeast-1.amazonaws.com"
WHEN = datetime(2026, 12, 3, 12, 0, 0, tzinfo=timezone.utc)

# Characters clients put in targets: unreserved, sub-delims, gen-delims that may appear, "%"
# (valid escapes in either case, and stray), spaces, non-ASCII.
_piece = st.one_of(
    st.sampled_from(list("aZ09-._~!$&'()*+,;=:@[]\"<>\\^`{|} ") + ["%", "%2F", "%3a", "%3A", "%7e", "%20", "%C3%A9", "%zz", ".", ".."]),
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
)
segment = st.lists(_piece, max_size=6).map("".join).filter(lambda s: "/" not in s and "?" not in s and "#" not in s)
path = st.lists(segment, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))
query_word = st.lists(st.one_of(_piece, st.sampled_from(["=", "%3D", "%26", "+", "%2B"])), max_size=5).map("".join).filter(
    lambda s: not any(c in s for c in "&#")
)
query = st.lists(st.tuples(query_word, st.one_of(st.none(), query_word)), max_size=5).map(
    lambda pairs: "&".join(k if v is None else f"{k}={v}" for k, v in pairs)
)


def crt_signature(method: str, target: str, body: bytes) -> str:
    # Absolute form: awscrt's parser rejects origin-form paths containing ":/" (see fake_aws).
    request = crt_http.HttpRequest(method, "http://origin" + target, crt_http.HttpHeaders([("host", HOST)]))
    config = crt_auth.AwsSigningConfig(
        algorithm=crt_auth.AwsSigningAlgorithm.V4,
        signature_type=crt_auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
        credentials_provider=crt_auth.AwsCredentialsProvider.new_static(CREDS.access_key, CREDS.secret_key, CREDS.token),
        region="ap-northeast-1",
        service="execute-api",
        date=WHEN,
        signed_body_value=hashlib.sha256(body).hexdigest(),
    )
    signed = crt_auth.aws_sign_request(request, config).result()
    return signed.headers.get("Authorization").rpartition("Signature=")[2]


def botocore_signature(method: str, target: str, body: bytes) -> str:
    request = AWSRequest(method=method, url=f"https://{HOST}{target}", data=body, headers={"host": HOST})
    request.context["timestamp"] = signing.amz_date(WHEN)
    request.headers["X-Amz-Date"] = signing.amz_date(WHEN)
    request.headers["X-Amz-Security-Token"] = CREDS.token
    auth = SigV4Auth(BotoCredentials(CREDS.access_key, CREDS.secret_key, CREDS.token), "execute-api", "ap-northeast-1")
    return auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)


def our_signature(method: str, raw_path: str, raw_query: str, body: bytes) -> tuple[str, str]:
    wire = canonical.wire_path(raw_path)
    params = canonical.wire_query(raw_query)
    signed = signing.sign(
        method=method,
        uri=canonical.canonical_uri(wire),
        query=canonical.canonical_query(params),
        headers=[("host", HOST)],
        payload_hash=hashlib.sha256(body).hexdigest(),
        credentials=CREDS,
        region="ap-northeast-1",
        service="execute-api",
        timestamp=signing.amz_date(WHEN),
    )
    q = canonical.query_string(params)
    return signed.headers["authorization"].rpartition("Signature=")[2], wire + ("?" + q if q else "")


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]), raw_path=path, raw_query=query, body=st.binary(max_size=64))
def test_signature_agrees_with_awscrt_and_botocore(method: str, raw_path: str, raw_query: str, body: bytes) -> None:
    ours, wire_target = our_signature(method, raw_path, raw_query, body)
    assert wire_target.isascii()
    assert ours == crt_signature(method, wire_target, body)
    assert ours == botocore_signature(method, wire_target, body)


def lenient_decode(text: str, plus_is_space: bool) -> bytes:
    raw = canonical.to_bytes(text.replace("+", " ") if plus_is_space else text)
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i : i + 1] == b"%" and len(raw[i + 1 : i + 3]) == 2 and all(c in b"0123456789abcdefABCDEF" for c in raw[i + 1 : i + 3]):
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def meant_params(raw_query: str) -> list[tuple[bytes, bytes]]:
    """What a form-decoding origin makes of the client's own query."""
    pairs = []
    for part in filter(None, raw_query.split("&")):
        name, _, value = part.partition("=")
        pairs.append((lenient_decode(name, True), lenient_decode(value, True)))
    return pairs


def meant_segments(raw_path: str) -> list[bytes]:
    """The client's path as decoded segments after RFC 3986 dot removal ("%2F" stays in its segment)."""
    kept: list[bytes] = []
    for seg in raw_path.split("/")[1:]:
        decoded = lenient_decode(seg, False)
        if decoded == b"..":
            if kept:
                kept.pop()
        elif decoded not in (b"", b"."):
            kept.append(decoded)
    return kept


@settings(max_examples=300, deadline=None)
@given(raw_path=path, raw_query=query)
def test_origin_decodes_what_the_client_meant(raw_path: str, raw_query: str) -> None:
    wire = canonical.wire_path(raw_path)
    assert [unquote_to_bytes(s) for s in wire.split("/")[1:] if s] == meant_segments(raw_path)
    params = canonical.wire_query(raw_query)
    assert [(unquote_to_bytes(n), unquote_to_bytes(v or "")) for n, v in params] == meant_params(raw_query)
    assert canonical.wire_path(wire) == wire  # normalizing twice changes nothing: sign == send


_sendable = segment.filter(lambda s: " " not in s and all(ord(c) > 32 and ord(c) != 127 for c in s))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segments=st.lists(_sendable, min_size=1, max_size=3), raw_query=query.filter(lambda q: " " not in q))
def test_random_targets_verify_end_to_end(make_stack: StackFactory, segments: list[str], raw_query: str) -> None:
    raw_path = "/prod/" + "/".join(segments)

    async def scenario() -> None:
        stack: Stack = await make_stack()
        try:
            target = raw_path + ("?" + raw_query if raw_query else "")
            response = await raw_request(stack.proxy.port, get(canonical.to_bytes(target)))
            assert response.status == 200, response.body
            seen = json.loads(response.body)
            expected = [[n.decode("utf-8", "backslashreplace"), v.decode("utf-8", "backslashreplace")] for n, v in meant_params(raw_query)]
            assert seen["params"] == expected
            assert [unquote_to_bytes(s) for s in seen["raw_path"].split("/")[1:] if s] == meant_segments(raw_path)
        finally:
            await stack.proxy.close(0.1)

    asyncio.get_event_loop().run_until_complete(scenario())
