"""diagnose.py and redact.py as pure functions: a reported 403 becomes one more table row."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timezone

import pytest
from multidict import CIMultiDict

from proxy import redact
from proxy.canonical_diff import RouteFacts, split_canonical
from proxy.diagnose import Diagnosis, Refusal, diagnose, parse_refusal
from proxy.signing import EMPTY_SHA256, canonical_request

ROUTE = RouteFacts("abc123.execute-api.us-east-1.amazonaws.com", "d111.cloudfront.net", "us-east-1", "execute-api")
NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=timezone.utc)
BODY_HASH = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def ours(**change: object) -> str:
    parts: dict[str, object] = {
        "method": "POST", "uri": "/prod/items", "query": "a=1&b=2",
        "headers": [("host", ROUTE.sign_host), ("x-amz-date", "20261203T120000Z"), ("x-amz-security-token", "TOKEN123")],
        "payload_hash": BODY_HASH,
    }
    parts.update(change)
    return canonical_request(**parts)  # type: ignore[arg-type]


def mismatch(theirs: str) -> Refusal:
    message = ("The request signature we calculated does not match the signature you provided.\n\n"
               f"The Canonical String for this request should have been\n'{theirs}'\n\n"
               "The String-to-Sign should have been\n'AWS4-HMAC-SHA256\n20261203T120000Z\n"
               "20261203/us-east-1/execute-api/aws4_request\nabc'\n")
    return Refusal("InvalidSignatureException", message, None)


def with_signed_list(canonical: str, signed: str) -> str:
    lines = canonical.split("\n")
    lines[-2] = signed
    return "\n".join(lines)


@pytest.mark.parametrize("theirs, cause, words", [
    (ours(headers=[("host", "d111.cloudfront.net"), ("x-amz-date", "20261203T120000Z"), ("x-amz-security-token", "TOKEN123")]),
     "viewer-host-forwarded", "AllViewerExceptHostHeader"),
    (ours(headers=[("host", "other.example.com"), ("x-amz-date", "20261203T120000Z"), ("x-amz-security-token", "TOKEN123")]),
     "wrong-sign-host", "set --sign-host other.example.com"),
    (ours(uri="/stage/prod/items"), "origin-path", "origin path /stage"),
    (ours(uri="/prod/items%2520x"), "path-changed", "AWS saw path /prod/items%2520x"),
    (ours(query=""), "query-not-forwarded", "a=1&b=2"),
    (ours(query="a=1"), "query-changed", "AWS saw query a=1 but the proxy signed a=1&b=2"),
    (ours(method="GET"), "method-changed", "AWS saw method GET but the proxy signed POST"),
    (ours(headers=[("host", ROUTE.sign_host), ("x-amz-date", "20261203T120000Z")]), "header-dropped",
     "x-amz-security-token did not reach AWS"),
    (ours(headers=[("host", ROUTE.sign_host), ("x-amz-date", "20261203T120000Z"), ("x-amz-security-token", "OTHER")]),
     "header-changed", "'<redacted>' -> '<redacted>'"),
    (with_signed_list(ours(), "host;x-amz-date"), "signed-headers-changed", "Authorization header was altered"),
    (ours(payload_hash=EMPTY_SHA256), "payload-changed", "body did not reach AWS"),
    (ours(payload_hash="0" * 64), "payload-changed", "a different body"),
    (ours(), "secret-key-mismatch", "secret key does not belong to the access key"),
])
def test_canonical_difference_names_the_part(theirs: str, cause: str, words: str) -> None:
    found = diagnose(mismatch(theirs), ours(), ROUTE, NOW)
    assert found.cause == cause, found
    assert words in found.summary
    assert "TOKEN123" not in found.summary and "OTHER" not in found.summary


def test_several_differences_are_all_named() -> None:
    found = diagnose(mismatch(ours(uri="/x/prod/items", query="")), ours(), ROUTE, NOW)
    assert found.cause == "origin-path"
    assert found.summary.endswith("(also differs: query)")


def test_split_canonical_reads_every_part() -> None:
    parts = split_canonical(ours())
    assert parts is not None
    assert (parts.method, parts.uri, parts.query) == ("POST", "/prod/items", "a=1&b=2")
    assert parts.headers["host"] == ROUTE.sign_host
    assert parts.signed_headers == "host;x-amz-date;x-amz-security-token"
    assert parts.payload_hash == BODY_HASH
    assert split_canonical("not\na canonical request") is None


@pytest.mark.parametrize("headers, body, error_type, message", [
    ({"x-amzn-ErrorType": "ForbiddenException:http://internal.amazon.com/coral/"}, b'{"message":"Forbidden"}',
     "ForbiddenException", "Forbidden"),
    ({}, b'{"Message":"User: anonymous is not authorized to perform: execute-api:Invoke on resource: arn:x"}',
     "", "User: anonymous is not authorized to perform: execute-api:Invoke on resource: arn:x"),
    ({}, b'{"__type":"com.amazon.coral.service#UnrecognizedClientException","message":"x"}',
     "UnrecognizedClientException", "x"),
    ({"Content-Encoding": "gzip", "x-amzn-ErrorType": "MissingAuthenticationTokenException"},
     gzip.compress(b'{"message":"Missing Authentication Token"}'), "MissingAuthenticationTokenException",
     "Missing Authentication Token"),
    ({}, b"<?xml version='1.0'?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we "
         b"calculated does not match</Message><CanonicalRequest>GET\n/\n\nhost:b\n\nhost\nUNSIGNED-PAYLOAD"
         b"</CanonicalRequest></Error>", "SignatureDoesNotMatch", None),
])
def test_parse_refusal(headers: dict[str, str], body: bytes, error_type: str, message: str | None) -> None:
    refusal = parse_refusal(CIMultiDict(headers), body)
    assert refusal is not None
    assert refusal.error_type == error_type
    if message is not None:
        assert refusal.message == message
    else:
        assert "'GET\n/\n\nhost:b\n\nhost\nUNSIGNED-PAYLOAD'" in refusal.message


def test_application_403_is_not_a_refusal() -> None:
    assert parse_refusal(CIMultiDict(), b'{"error":"you may not see this order"}') is None
    assert parse_refusal(CIMultiDict(), b"<html>Forbidden</html>") is None


def test_cloudfront_refusal() -> None:
    page = (b"<HTML><BODY><H1>403 ERROR</H1><H2>The request could not be satisfied.</H2><HR noshade size=\"1px\">"
            b"This distribution is not configured to allow the HTTP request method that was used for this request."
            b"<BR clear=\"all\">Generated by cloudfront (CloudFront)</BODY></HTML>")
    refusal = parse_refusal(CIMultiDict({"X-Cache": "Error from cloudfront"}), page)
    assert refusal is not None
    found = diagnose(refusal, ours(), ROUTE, NOW)
    assert found.cause == "cloudfront-refused" and "not configured to allow the HTTP request method" in found.summary


def test_skew_without_date_header_reads_the_message() -> None:
    message = "Signature expired: 20261203T120000Z is now earlier than 20261203T125500Z (20261203T130000Z - 5 min.)"
    found = diagnose(Refusal("InvalidSignatureException", message, None), ours(), ROUTE, NOW)
    assert found.cause == "clock-skew" and found.skew_seconds is not None
    assert round(found.skew_seconds) == 3600 and "1 h" in found.summary and "behind" in found.summary


@pytest.mark.parametrize("error_type, message, cause, words", [
    ("InvalidSignatureException", "Credential should be scoped to a valid region, not 'us-east-1'. ", "wrong-region", "'us-east-1'"),
    ("AuthorizationHeaderMalformed", "The authorization header is malformed; the region 'us-east-1' is wrong; "
     "expecting 'eu-west-1'", "wrong-region", "set --region eu-west-1"),
    ("InvalidSignatureException", "Credential should be scoped to correct service: 'lambda'. ", "wrong-service", "--service lambda"),
    ("AccessDeniedException", "User: anonymous is not authorized to perform: execute-api:Invoke on resource: "
     "arn:aws:execute-api:us-east-1:1:a/prod/GET/ with an explicit deny", "iam-denied", "(an explicit deny)"),
    ("ForbiddenException", "Forbidden", "forbidden", "names no API"),
    ("InvalidSignatureException", "The request signature we calculated does not match the signature you provided.",
     "signature-mismatch", "quoted no canonical request"),
    ("IncompleteSignatureException", "Authorization header requires 'Credential' parameter. Authorization=AWS4-HMAC-SHA256 "
     "Credential=AKIDSECRET/2026", "incomplete-signature", "X-Amz-Date"),
    ("ThrottlingException", "Rate exceeded Credential=AKIDSECRET/x", "aws-refused", "ThrottlingException: Rate exceeded"),
])
def test_message_rules(error_type: str, message: str, cause: str, words: str) -> None:
    found = diagnose(Refusal(error_type, message, None), ours(), ROUTE, NOW)
    assert found.cause == cause, found
    assert words in found.summary
    assert "AKIDSECRET" not in found.summary


def test_header_value_is_one_printable_line() -> None:
    value = Diagnosis("x", "line one\nline two: caf\u00e9 " + "y" * 1000).header_value()
    assert "\n" not in value and value.isascii() and len(value) <= 600


def test_redaction() -> None:
    assert redact.query("X-Amz-Credential=AKID%2F2026&X-Amz-Signature=abc&limit=10&token=t") == (
        "X-Amz-Credential=<redacted>&X-Amz-Signature=<redacted>&limit=10&token=<redacted>")
    logged = redact.canonical_request(ours(query="X-Amz-Signature=deadbeef&a=1"))
    assert "TOKEN123" not in logged and "deadbeef" not in logged
    assert "x-amz-security-token:<redacted>" in logged and "host:" + ROUTE.sign_host in logged
    assert redact.text("Authorization=AWS4-HMAC-SHA256 Credential=AKID/x, Signature=ff00") == (
        "Authorization=<redacted> Credential=<redacted>, Signature=<redacted>")
