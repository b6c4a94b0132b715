"""Telling an upstream's "your token is expired or invalid" 403 from every other 403.

Such an answer means our credentials went stale (rotated keys, a revoked or expired session) and
is worth one forced refresh and one retry; any other 403 (a missing IAM permission, a signature
mismatch) would fail the same way again and goes to the client untouched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# API Gateway, Lambda URLs and most JSON services say it in x-amzn-ErrorType (sometimes followed by
# ":http://internal.amazon.com/..."); S3 in its XML <Code>; all of them in the message.
TOKEN_ERROR_TYPES = frozenset(
    {"ExpiredTokenException", "UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken", "InvalidToken"}
)
TOKEN_MESSAGE = re.compile(
    r"security token included in the request is (?:expired|invalid)"
    r"|provided token (?:has expired|is malformed or otherwise invalid)",
    re.IGNORECASE,
)


def token_rejection(headers: Mapping[str, str], head: bytes) -> str | None:
    """Why the upstream rejected our token, from a 403's headers and the head of its body
    (None: it did not)."""
    error_type = headers.get("x-amzn-ErrorType", "").partition(":")[0].strip()
    if error_type:
        return error_type if error_type in TOKEN_ERROR_TYPES else None
    found = TOKEN_MESSAGE.search(head.decode("utf-8", "replace"))
    return found.group(0) if found else None
