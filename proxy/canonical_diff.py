"""Where two canonical requests part: ours (what the proxy signed) and AWS's (what it verified).

Pure functions. Each part of the canonical request (method, URI, query, each signed header, the
signed-header list, the payload hash) that differs is named with the hop behaviour that most
likely changed it, e.g. CloudFront forwarding the viewer's Host or adding its origin path.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy import redact
from proxy.signing import EMPTY_SHA256


@dataclass(frozen=True, slots=True)
class RouteFacts:
    """What the route says about hosts and scope, to tell the causes apart."""

    sign_host: str
    upstream_authority: str  # host[:port] the proxy sends to (what CloudFront sees as Host)
    region: str
    service: str


@dataclass(frozen=True, slots=True)
class CanonicalParts:
    method: str
    uri: str
    query: str
    headers: dict[str, str]
    signed_headers: str
    payload_hash: str


def split_canonical(text: str) -> CanonicalParts | None:
    """method, URI, query, header lines, a blank line, signed header names, payload hash."""
    lines = text.split("\n")
    if len(lines) < 6 or lines[-3] != "":
        return None
    headers: dict[str, str] = {}
    for line in lines[3:-3]:
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers[name.strip().lower()] = value
    return CanonicalParts(lines[0], lines[1], lines[2], headers, lines[-2], lines[-1])


def differences(mine: CanonicalParts, aws: CanonicalParts, route: RouteFacts) -> list[tuple[str, str, str]]:
    """(part, cause, summary) for every part of the canonical request that differs."""
    out: list[tuple[str, str, str]] = []
    our_host, their_host = mine.headers.get("host", ""), aws.headers.get("host", "")
    if our_host != their_host:
        if _same_authority(their_host, route.upstream_authority):
            out.append(("host", "viewer-host-forwarded", f"AWS saw Host {their_host} (the upstream's own name) but "
                        f"the proxy signed for {our_host}: CloudFront forwards the viewer's Host header; use the "
                        "origin request policy AllViewerExceptHostHeader"))
        else:
            out.append(("host", "wrong-sign-host", f"AWS saw Host {their_host} but the proxy signed for {our_host}: "
                        f"set --sign-host {their_host}"))
    if mine.uri != aws.uri:
        prefix = added_prefix(mine.uri, aws.uri)
        if prefix:
            out.append(("path", "origin-path", f"AWS saw path {aws.uri} but the proxy signed {mine.uri}: the "
                        f"CloudFront origin path {prefix} is added in transit; run the proxy with --origin-path {prefix} "
                        "(signed, not sent), or remove the origin path from the CloudFront origin"))
        else:
            out.append(("path", "path-changed", f"AWS saw path {aws.uri} but the proxy signed {mine.uri}: a hop "
                        "rewrote or re-encoded the path (a CloudFront function, origin path or cache behaviour)"))
    if mine.query != aws.query:
        if not aws.query:
            out.append(("query", "query-not-forwarded", f"the query string ({redact.query(mine.query)[:120]}) did not "
                        "reach AWS: the CloudFront origin request policy must forward all query strings"))
        else:
            out.append(("query", "query-changed", f"AWS saw query {redact.query(aws.query)[:120]} but the proxy signed "
                        f"{redact.query(mine.query)[:120]}: forward all query strings unchanged in CloudFront"))
    if mine.method != aws.method:
        out.append(("method", "method-changed", f"AWS saw method {aws.method} but the proxy signed {mine.method}: "
                    "the CloudFront behaviour must allow every method (GET, HEAD, OPTIONS, PUT, POST, PATCH, DELETE)"))
    for name in sorted(mine.headers):
        if name == "host":
            continue
        if name not in aws.headers:
            out.append((f"header {name}", "header-dropped", f"signed header {name} did not reach AWS: CloudFront "
                        "must forward it (origin request policy), or stop signing it"))
        elif aws.headers[name] != mine.headers[name]:
            before = redact.header_value(name, mine.headers[name])[:80]
            after = redact.header_value(name, aws.headers[name])[:80]
            out.append((f"header {name}", "header-changed", f"signed header {name} changed in transit "
                        f"({before!r} -> {after!r}): a hop rewrites it (CloudFront replaces User-Agent, normalizes "
                        "Accept-Encoding); stop signing it (--signed-header)"))
    if mine.signed_headers != aws.signed_headers:
        out.append(("signed headers", "signed-headers-changed", f"AWS read the signed header list "
                    f"{aws.signed_headers} but the proxy signed {mine.signed_headers}: the Authorization header "
                    "was altered in transit"))
    if mine.payload_hash != aws.payload_hash:
        lost = aws.payload_hash == EMPTY_SHA256
        out.append(("payload hash", "payload-changed", "the request body did not reach AWS" if lost else
                    "AWS hashed a different body than the proxy sent: a hop changed the body in transit"))
    return out


def added_prefix(ours: str, theirs: str) -> str | None:
    """The path prefix a hop put in front of our path (CloudFront's origin path), if that is all."""
    if ours == "/" and theirs.rstrip("/") and "/" not in theirs.strip("/") and theirs.startswith("/"):
        return theirs.rstrip("/")
    if len(theirs) > len(ours) and theirs.endswith(ours):
        prefix = theirs[: len(theirs) - len(ours)]
        if prefix.startswith("/") and not prefix.endswith("/"):
            return prefix
    return None


def _same_authority(a: str, b: str) -> bool:
    def norm(x: str) -> str:
        x = x.strip().lower()
        return x[:-4] if x.endswith(":443") else x[:-3] if x.endswith(":80") else x

    return norm(a) == norm(b)
