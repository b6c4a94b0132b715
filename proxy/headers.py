"""Which headers cross the proxy, in each direction (DESIGN.md facts 4, 5 and 7).

Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection, never the next; the same list
as Go's httputil.ReverseProxy, plus every header that `Connection` names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

# An HTTP token: what header names and methods are made of (RFC 9110 5.1, 5.6.2).
HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded from the client: the signer sets fresh values (a client `Date` would also make a
# signer sign `Date` instead of X-Amz-Date), Host is the upstream's, the body's length is ours to
# state, and `Expect` is answered by the proxy itself.
CLIENT_ONLY = frozenset(
    {"authorization", "date", "host", "content-length", "expect", "x-proxy-token"}
)


# Set by the signer alone, whatever the configuration lists.
SIGNER_OWNED = frozenset({"x-amz-date", "x-amz-security-token", "x-amz-content-sha256"})


_NEVER_FORWARDED = HOP_BY_HOP | CLIENT_ONLY


def connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    values = headers.getall("Connection", ())
    if len(values) == 1 and "," not in values[0]:  # one token, "keep-alive" or "close" nearly always
        token = values[0].strip().lower()
        return {token} if token else set()
    tokens: set[str] = set()
    for value in values:
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def _with_connection_tokens(names: frozenset[str], headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """`names` and what the message's Connection header names (none is the usual case: no union)."""
    return names | connection_tokens(headers) if "Connection" in headers else names


def upstream_request_headers(
    headers: CIMultiDictProxy[str], keep_amz: Iterable[str] = ()
) -> CIMultiDict[str]:
    """Client headers to forward unsigned: no hop-by-hop, no Proxy-* (they address this proxy),
    no auth, no X-Amz-* the user did not list."""
    dropped = _with_connection_tokens(_NEVER_FORWARDED, headers)
    keep = frozenset(keep_amz) - SIGNER_OWNED if keep_amz else frozenset()
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in dropped or lower.startswith("proxy-") or (lower.startswith("x-amz-") and lower not in keep):
            continue
        out.add(name, value)
    return out


def client_response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Upstream response headers to pass back: all but hop-by-hop (several Set-Cookie kept)."""
    out = CIMultiDict(headers)  # copied in C, then a few lookups: cheaper than filtering each name
    for name in _with_connection_tokens(HOP_BY_HOP, headers):
        out.popall(name, None)
    return out
