"""AWS's own SigV4 test suite (tests/aws-sigv4-test-suite/v4): our canonical request, string to
sign and signature must equal AWS's for every header-signing case."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import pytest

from proxy import canonical, signing

SUITE = Path(__file__).resolve().parent / "aws-sigv4-test-suite" / "v4"
CASES = sorted(p.name for p in SUITE.iterdir())


def parse_request(text: str) -> tuple[str, str, list[tuple[str, str]], bytes]:
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    method, rest = lines[0].split(" ", 1)
    target = rest.rsplit(" ", 1)[0]
    headers: list[tuple[str, str]] = []
    for line in filter(None, lines[1:]):
        if line[:1] in (" ", "\t"):  # obs-fold continuation
            name, value = headers[-1]
            headers[-1] = (name, value + "\n" + line)
        else:
            name, value = line.split(":", 1)
            headers.append((name.lower(), value))
    return method, target, headers, body.encode()


@pytest.mark.parametrize("case", CASES)
def test_header_signing_matches_aws(case: str) -> None:
    folder = SUITE / case
    context = json.loads((folder / "context.json").read_text())
    method, target, headers, body = parse_request((folder / "request.txt").read_text())
    raw_path, _, raw_query = target.partition("?")
    if context["normalize"]:
        kept, trailing = canonical.remove_dot_segments(raw_path.split("/")[1:])
        path = "/" + "/".join(kept) + ("/" if trailing and kept else "")
    else:
        path = raw_path
    # The suite's request paths are unencoded, so "encode once" is the suite's double encoding.
    uri = canonical.canonical_uri(path)
    query = canonical.canonical_query(canonical.wire_query(raw_query, plus_is_space=False))
    creds = context["credentials"]
    token = None if context.get("omit_session_token") else creds.get("token")
    payload_hash = hashlib.sha256(body).hexdigest()
    headers = [(n, v) for n, v in headers if not (n == "x-amz-security-token" and token is None)]
    headers = [(n, v) for n, v in headers if n != "x-amz-security-token"]
    signed = signing.sign(
        method=method,
        uri=uri,
        query=query,
        headers=headers,
        payload_hash=payload_hash,
        credentials=signing.Credentials(creds["access_key_id"], creds["secret_access_key"], token),
        region=context["region"],
        service=context["service"],
        timestamp=signing.amz_date(datetime.fromisoformat(context["timestamp"].replace("Z", "+00:00"))),
        payload_header=context["sign_body"],
    )
    assert signed.canonical_request == (folder / "header-canonical-request.txt").read_text()
    assert signed.string_to_sign == (folder / "header-string-to-sign.txt").read_text()
    assert signed.headers["authorization"].endswith(
        "Signature=" + (folder / "header-signature.txt").read_text().strip()
    )
