"""Why AWS said no: read an upstream 403 and name the cause, and the fix, in one line.

Pure functions: the 403's headers and (capped) body, the canonical request we signed and what the
route knows about its hosts go in; a `Diagnosis` comes out. API Gateway's signature-mismatch
message quotes the canonical request *it* computed ("The Canonical String for this request should
have been ..."), so comparing it with ours line by line names the part a hop changed in transit.
"""

from __future__ import annotations

import html
import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

from proxy import redact
from proxy.canonical_diff import RouteFacts, differences, split_canonical
from proxy.config import infer_region_service

DIAGNOSIS_HEADER = "X-Sigv4-Proxy-Diagnosis"
MAX_SKEW_SECONDS = 300  # SigV4 signatures are valid 5 minutes either side of AWS's clock
_CANONICAL_MARK = "The Canonical String for this request should have been"
_STS_MARK = "The String-to-Sign should have been"
_AMZ_TIME = r"(\d{8}T\d{6}Z)"
_SKEW = re.compile(rf"Signature (expired|not yet current): {_AMZ_TIME} is (?:now earlier|still later) than "
                   rf"{_AMZ_TIME} \({_AMZ_TIME} [-+] 5 min\.\)")
_IAM = re.compile(r"User: (\S+) is not authorized to perform: (\S+) on resource: (\S+?)(?= with |\s*$|\.?$)(.*)", re.S)
_QUOTED = re.compile(r"'([^']+)'")


@dataclass(frozen=True, slots=True)
class Refusal:
    """What the upstream said: its error type (x-amzn-ErrorType or an XML Code) and message."""

    error_type: str
    message: str
    date: datetime | None  # the upstream's Date header: AWS's clock, to measure ours against


@dataclass(frozen=True, slots=True)
class Diagnosis:
    cause: str  # a stable code, e.g. "viewer-host-forwarded"
    summary: str  # one line: what differs and what to change
    error_type: str = ""
    skew_seconds: float | None = None

    def header_value(self) -> str:
        """One header line: printable ASCII only (RFC 9110 field values), bounded."""
        text = f"{self.cause}: {self.summary}"
        text = "".join(c if " " <= c <= "~" else "?" for c in text)
        return text if len(text) <= 600 else text[:597] + "..."


def decode_body(body: bytes, content_encoding: str) -> bytes:
    """A (possibly truncated) gzip/deflate body as far as it decodes; other encodings as they are."""
    encoding = content_encoding.strip().lower()
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return body
    try:
        return zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(body)
    except zlib.error:
        return body


def parse_refusal(headers: Mapping[str, str], body: bytes) -> Refusal | None:
    """The AWS refusal in a 403, or None when the 403 is the application's own answer."""
    error_type = headers.get("x-amzn-ErrorType", "").split(":", 1)[0].strip()
    text = decode_body(body, headers.get("Content-Encoding", "")).decode("utf-8", "replace")
    message = ""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        message = str(data.get("message") or data.get("Message") or "")
        error_type = error_type or str(data.get("__type", "")).rpartition("#")[2]
    elif "<Error>" in text:  # S3-style XML errors
        code = re.search(r"<Code>(.*?)</Code>", text, re.S)
        found = re.search(r"<Message>(.*?)</Message>", text, re.S)
        canonical = re.search(r"<CanonicalRequest>(.*?)</CanonicalRequest>", text, re.S)
        error_type = error_type or (code.group(1) if code else "")
        message = html.unescape(found.group(1)) if found else ""
        if canonical:
            message += f"\n\n{_CANONICAL_MARK}\n'{html.unescape(canonical.group(1))}'\n"
    elif "cloudfront" in text.lower():  # CloudFront's own HTML error page
        error_type = "CloudFront"
        message = " ".join(re.sub(r"<[^>]+>", " ", text).split())[:300]
    if not error_type and not _known_message(message):
        return None
    return Refusal(error_type, message, http_date(headers.get("Date")))


def _known_message(message: str) -> bool:
    known = ("Signature", "security token", "Authentication Token", "Credential should be scoped",
             "not authorized to perform")
    return any(k in message for k in known)


def http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None


def quoted_after(message: str, mark: str) -> str | None:
    """The '...'-quoted block that follows `mark` (it may itself contain quotes and newlines)."""
    start = message.find(mark)
    if start < 0:
        return None
    rest = message[start + len(mark) :].lstrip(" \n")
    if not rest.startswith("'"):
        return None
    rest = rest[1:]
    end = rest.find("'\n\n")
    end = end if end >= 0 else rest.rstrip().rfind("'")
    return rest[:end] if end >= 0 else None


def measure_skew(refusal: Refusal, now: datetime) -> float | None:
    """Seconds AWS's clock is ahead of ours (negative: ours is ahead), from the Date header.

    Date has one-second resolution and is truncated, so half a second is added back. Without a
    Date header, the server time that API Gateway quotes in the message is used instead.
    """
    if refusal.date is not None:
        return skew_against(refusal.date, now)
    match = _SKEW.search(refusal.message)
    if match:
        return skew_against(datetime.strptime(match.group(4), "%Y%m%dT%H%M%SZ").replace(tzinfo=now.tzinfo), now)
    return None


def skew_against(server_time: datetime, now: datetime) -> float:
    """Seconds a whole-second server timestamp is ahead of `now` (half a second added back)."""
    return (server_time - now).total_seconds() + 0.5


def describe_skew(seconds: float) -> str:
    whole = round(abs(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else "", f"{secs} s"]
    span = " ".join(p for p in parts if p)
    return f"{span} {'behind' if seconds > 0 else 'ahead of'} AWS's clock"


def diagnose(
    refusal: Refusal, ours: str | None, route: RouteFacts, now: datetime
) -> Diagnosis:
    """Name the cause of an AWS 403; `ours` is the canonical request the proxy signed."""
    message, kind = refusal.message, refusal.error_type

    def found(cause: str, summary: str, skew: float | None = None) -> Diagnosis:
        return Diagnosis(cause, summary, kind, skew)

    theirs = quoted_after(message, _CANONICAL_MARK)
    if theirs is not None and ours is not None:
        their_sts = quoted_after(message, _STS_MARK)
        return compare(ours, theirs, their_sts, route, kind)
    if "Signature expired" in message or "Signature not yet current" in message:
        skew = measure_skew(refusal, now)
        if skew is None:
            return found("clock-skew", "AWS says the signature is outside its 5-minute window: the local clock is "
                         "off by more than 5 minutes; sync it (NTP)")
        return found("clock-skew", f"the local clock is {describe_skew(skew)} (measured against the upstream's "
                     "Date header); AWS accepts signatures only within 5 minutes of its time: sync the clock "
                     "(NTP, e.g. `timedatectl set-ntp true`)", skew)
    if "Missing Authentication Token" in message or kind == "MissingAuthenticationTokenException":
        return found("missing-authentication-token", "no Authorization header reached API Gateway: the CloudFront "
                     "behaviour must forward Authorization, X-Amz-Date and X-Amz-Security-Token (origin request "
                     "policy AllViewerExceptHostHeader); or the path names no resource or stage (check the stage, "
                     "e.g. /prod/...)")
    if kind == "ExpiredTokenException" or "token included in the request is expired" in message:
        return found("expired-security-token", "the temporary credentials (session token) have expired: renew them "
                     "at their source (`aws sso login`, re-assume the role, refresh the environment)")
    if kind in ("UnrecognizedClientException", "InvalidClientTokenId") or "token included in the request is invalid" in message:
        sent_token = ours is not None and "\nx-amz-security-token:" in ours
        why = ("the access key is unknown or revoked, the session token does not belong to it, or CloudFront "
               "does not forward X-Amz-Security-Token") if sent_token else (
               "the access key is unknown or revoked (temporary ASIA... keys also need their session token)")
        return found("invalid-security-token", f"AWS does not recognise the credentials: {why}")
    if "Credential should be scoped to a valid region" in message or "is wrong; expecting '" in message:
        expected = re.search(r"expecting '([^']+)'", message)
        in_host = infer_region_service(route.sign_host.split(":")[0])[0]
        if expected:
            fix = f"set --region {expected.group(1)}"
        elif in_host and in_host != route.region:
            fix = f"set --region {in_host} (the region in the signing host's name)"
        else:
            fix = "set --region to the API's region"
        return found("wrong-region", f"the credential is scoped to region {route.region!r}, which this endpoint "
                     f"does not accept: {fix}")
    if "Credential should be scoped to correct service" in message:
        quoted = _QUOTED.search(message.partition("service")[2])
        expected = quoted.group(1) if quoted else "the API's service"
        return found("wrong-service", f"the credential is scoped to service {route.service!r} but AWS expects "
                     f"{expected!r}: set --service {expected}")
    iam = _IAM.search(message)
    if iam:
        principal, action, resource, tail = iam.groups()
        explicit = " (an explicit deny)" if "explicit deny" in tail else ""
        unsigned = "; 'anonymous' means the request reached AWS unsigned" if principal == "anonymous" else ""
        return found("iam-denied", f"the signature is valid but IAM denies {principal} {action} on {resource}"
                     f"{explicit}: allow it in the identity's policy or the API's resource policy{unsigned}")
    if kind == "IncompleteSignatureException" or "requires existence of either a 'X-Amz-Date'" in message:
        return found("incomplete-signature", "the signature arrived incomplete (no X-Amz-Date, or a mangled "
                     "Authorization): CloudFront must forward X-Amz-Date and Authorization unchanged")
    if kind in ("InvalidSignatureException", "SignatureDoesNotMatch") or "signature we calculated does not match" in message:
        return found("signature-mismatch", "AWS computed a different signature and quoted no canonical request to "
                     f"compare: check --sign-host ({route.sign_host}), the region and the secret key")
    if kind == "ForbiddenException":
        return found("forbidden", "API Gateway refused before checking the signature: the Host that reached it "
                     "names no API (CloudFront forwarding the viewer's Host?), a private API reached from outside "
                     "its VPC endpoint, or a WAF rule")
    if kind == "CloudFront":
        return found("cloudfront-refused", f"CloudFront itself refused the request (it never reached the API): "
                     f"{message[:200]}")
    return found("aws-refused", f"AWS refused the request: {kind or 'no error type'}: "
                 f"{redact.text(message.splitlines()[0] if message else '')[:200]}")


def compare(ours: str, theirs: str, their_sts: str | None, route: RouteFacts, kind: str) -> Diagnosis:
    """Compare AWS's canonical request with ours; the first difference (by likelihood) is the cause."""
    mine, aws = split_canonical(ours), split_canonical(theirs)
    if mine is None or aws is None:
        return Diagnosis("signature-mismatch", "AWS computed a different canonical request (unreadable to compare)", kind)
    found = differences(mine, aws, route)
    if not found:
        scope = their_sts.split("\n")[2] if their_sts and their_sts.count("\n") >= 3 else None
        if scope and scope.split("/")[1:3] != [route.region, route.service]:
            return Diagnosis("wrong-scope", f"AWS expects the credential scope {scope}: set --region and --service", kind)
        return Diagnosis("secret-key-mismatch", "AWS computed the same canonical request, so the key differs: the "
                         "secret key does not belong to the access key (check the credentials' source)", kind)
    (_, cause, summary), rest = found[0], found[1:]
    if rest:
        summary += f" (also differs: {', '.join(part for part, _c, _s in rest)})"
    return Diagnosis(cause, summary, kind)
