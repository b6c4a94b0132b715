"""Masks for secrets in anything the proxy writes to a log, a header or an error body.

Pure functions. The canonical request carries the session token (x-amz-security-token is signed)
and may carry presigned-URL query values (X-Amz-Credential, X-Amz-Signature); AWS's own 403
messages echo the Authorization header. None of these may reach a log line (DESIGN.md, safety).
"""

from __future__ import annotations

import re

MASK = "<redacted>"
# Header or query names whose values are credentials, whatever the service calls them.
_SENSITIVE_NAME = re.compile(r"token|auth|secret|password|signature|credential|cookie|api[-_]?key", re.I)
_IN_TEXT = [
    (re.compile(r"(Credential=)[^,\s&'\"]+", re.I), r"\1" + MASK),
    (re.compile(r"(Signature=)[^,\s&'\"]+", re.I), r"\1" + MASK),
    (re.compile(r"(Authorization=)[^,\s'\"]+", re.I), r"\1" + MASK),
    (re.compile(r"(X-Amz-Security-Token[=:])[^\s&'\"]+", re.I), r"\1" + MASK),
]


def is_sensitive(name: str) -> bool:
    return bool(_SENSITIVE_NAME.search(name))


def query(text: str) -> str:
    """A query string with the values of credential-like parameters masked."""
    parts = []
    for part in text.split("&"):
        name, sep, _value = part.partition("=")
        parts.append(f"{name}={MASK}" if sep and is_sensitive(name) else part)
    return "&".join(parts)


def header_value(name: str, value: str) -> str:
    return MASK if is_sensitive(name) else value


def canonical_request(text: str) -> str:
    """A canonical request (method, URI, query, headers, ...) fit for a log: no token, no signature."""
    lines = text.split("\n")
    if len(lines) > 2:
        lines[2] = query(lines[2])
    for i, line in enumerate(lines[3:], start=3):
        name, sep, value = line.partition(":")
        if sep and is_sensitive(name):
            lines[i] = f"{name}:{MASK}"
    return "\n".join(lines)


def text(message: str) -> str:
    """Free text such as an AWS error message: mask Credential=, Signature=, tokens."""
    for pattern, replacement in _IN_TEXT:
        message = pattern.sub(replacement, message)
    return message
