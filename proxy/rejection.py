"""Telling an upstream's "your token is expired or invalid" 403 from every other 403.

Such an answer means our credentials went stale (rotated keys, a revoked or expired session) and
is worth one forced refresh and one retry; any other 403 (a missing IAM permission, a signature
mismatch) would fail the same way again and goes to the client untouched.
"""

from __future__ import annotations

import re

import aiohttp

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
HEAD_LIMIT = 64 * 1024  # error bodies are small; never buffer more than this of a 403


async def token_rejection(upstream: aiohttp.ClientResponse) -> tuple[str | None, bytes]:
    """Why the upstream rejected our token (None: it did not), and the body bytes read to tell.

    The caller must send those bytes on to the client first if it passes the response through.
    """
    if upstream.status != 403:
        return None, b""
    error_type = upstream.headers.get("x-amzn-ErrorType", "").partition(":")[0].strip()
    if error_type:
        return (error_type if error_type in TOKEN_ERROR_TYPES else None), b""
    head = bytearray()
    try:
        while len(head) < HEAD_LIMIT and (chunk := await upstream.content.read(HEAD_LIMIT - len(head))):
            head += chunk
    except (aiohttp.ClientError, TimeoutError):
        return None, bytes(head)  # the body broke off: streaming the rest reports it (forward.py)
    found = TOKEN_MESSAGE.search(head.decode("utf-8", "replace"))
    return (found.group(0) if found else None), bytes(head)
