"""The signer's short cuts produce exactly what the general steps produce: the canonical headers of
a request that signs `host` alone (the proxy's usual one), and HMAC from cached key pads. The
end-to-end agreement with awscrt and botocore is test_properties.py's; AWS's vectors are
test_aws_vectors.py's."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import canonical, signing

header_value = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(host=header_value, token=st.one_of(st.none(), header_value), with_payload=st.booleans())
def test_host_alone_short_cut_equals_the_general_canonical_headers(host: str, token: str | None, with_payload: bool) -> None:
    added = {"x-amz-date": "20261203T120000Z"}
    if token is not None:
        added["x-amz-security-token"] = token
    if with_payload:
        added["x-amz-content-sha256"] = hashlib.sha256(b"x").hexdigest()
    short = signing._canonical_headers([("host", host)], added)
    assert short == canonical.canonical_headers([("host", host), *added.items()])


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=64), message=header_value)
def test_hmac_from_cached_pads_equals_hmac(key: bytes, message: str) -> None:
    assert signing.signature(key, message) == hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


@settings(max_examples=100, deadline=None)
@given(token=st.one_of(st.none(), st.text("abcXYZ019+/=", min_size=1, max_size=60)), payload_header=st.booleans())
def test_sign_with_and_without_a_token_equals_the_step_by_step_signature(token: str | None, payload_header: bool) -> None:
    creds = signing.Credentials("AKIDFASTPATH", "fast-path-secret", token)
    when = "20261203T120000Z"
    signed = signing.sign(method="GET", uri="/a", query="b=1", headers=[("host", "h.example")], payload_hash=signing.EMPTY_SHA256,
                          credentials=creds, region="eu-west-1", service="execute-api", timestamp=when, payload_header=payload_header)
    extra = [("x-amz-date", when)]
    if token:
        extra.append(("x-amz-security-token", token))
    if payload_header:
        extra.append(("x-amz-content-sha256", signing.EMPTY_SHA256))
    expected = signing.canonical_request("GET", "/a", "b=1", [("host", "h.example"), *extra], signing.EMPTY_SHA256)
    assert signed.canonical_request == expected
    scope = signing.credential_scope(when[:8], "eu-west-1", "execute-api")
    to_sign = signing.string_to_sign(when, scope, expected)
    key = signing.signing_key(creds.secret_key, when[:8], "eu-west-1", "execute-api")
    assert signed.headers["authorization"].endswith("Signature=" + hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest())
