"""Wire form and SigV4 canonical form of a request target, as pure functions.

The proxy normalizes the client's path and query once into a strict RFC 3986 *wire form*, signs
that and sends exactly that (DESIGN.md facts 1-3). Every function here is pure: strings in,
strings out, no I/O, so each rule can be pinned by AWS's published vectors and by awscrt.
"""

from __future__ import annotations

import re

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar = unreserved / pct-encoded / sub-delims / ":" / "@". ";" is left out on purpose:
# servers such as Tomcat and some CDNs treat it as a matrix-parameter separator and strip what
# follows, so it always travels as %3B (and so does "|", which RFC 3986 does not allow at all).
_PATH_SAFE = _UNRESERVED | frozenset(b"!$&'()*+,=:@")
_HEX = frozenset(b"0123456789abcdefABCDEF")

_PATH_BYTE = [chr(b) if b in _PATH_SAFE else f"%{b:02X}" for b in range(256)]
_STRICT_BYTE = [chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256)]
# SigV4 URI-encodes every byte of the wire path except unreserved characters and "/".
_URI_ENCODE = {b: f"%{b:02X}" for b in range(128) if b not in _UNRESERVED and b != ord("/")}

# A path made only of characters that travel as they are, with no "//", "/./" or "/../", is
# already in wire form: the common case skips the byte-by-byte walk.
_PLAIN_PATH = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,=:@]+/?)*")
_PLAIN_QUERY_PART = re.compile(r"[A-Za-z0-9\-._~]*(?:=[A-Za-z0-9\-._~]*)?")


def to_bytes(text: str) -> bytes:
    """Bytes of a request target as aiohttp handed it over (UTF-8, undecodable bytes escaped)."""
    return text.encode("utf-8", "surrogateescape")


def _encode_segment(segment: bytes) -> str:
    """Percent-encode one path segment for the wire, keeping the client's own escapes.

    A valid %XX stays an escape (uppercase hex), except for unreserved characters, which RFC 3986
    section 6.2.2.2 says to decode; a stray "%" becomes %25. So "a%2Fb" stays one segment and
    "%3A" is never turned into ":" (the two sign differently: ../shared/cases P2, P4).
    """
    out: list[str] = []
    i, n = 0, len(segment)
    while i < n:
        byte = segment[i]
        if byte == 0x25 and i + 2 < n and segment[i + 1] in _HEX and segment[i + 2] in _HEX:
            value = int(segment[i + 1 : i + 3], 16)
            out.append(chr(value) if value in _UNRESERVED else f"%{value:02X}")
            i += 3
            continue
        out.append(_PATH_BYTE[byte])
        i += 1
    return "".join(out)


def remove_dot_segments(segments: list[str]) -> tuple[list[str], bool]:
    """RFC 3986 5.2.4 on a split path, also dropping empty segments (repeated "/").

    Returns the kept segments and whether the path ends in "/" (a trailing slash, or a final
    "." or ".." which RFC 3986 resolves to a directory).
    """
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    last = segments[-1] if segments else ""
    return kept, last in ("", ".", "..")


def wire_path(raw_path: str, normalize: bool = True) -> str:
    """The path we send and sign, from the client's raw path (without the query).

    normalize=False is for S3, whose keys may legitimately contain "//" or "." segments.
    """
    if normalize and _PLAIN_PATH.fullmatch(raw_path) and "//" not in raw_path and "/." not in raw_path:
        return raw_path
    segments = [_encode_segment(part) for part in to_bytes(raw_path).split(b"/")]
    if not normalize:
        path = "/".join(segments)
        return path if path.startswith("/") else "/" + path
    kept, trailing = remove_dot_segments(segments[1:] if raw_path.startswith("/") else segments)
    if not kept:
        return "/"
    return "/" + "/".join(kept) + ("/" if trailing else "")


def canonical_uri(path: str, double_encode: bool = True) -> str:
    """SigV4 canonical URI of a wire path: encoded once more, except for S3 (DESIGN.md fact 1)."""
    if not double_encode:
        return path
    return path.translate(_URI_ENCODE) if path.isascii() else "".join(
        _STRICT_BYTE[b] if b != 0x2F else "/" for b in to_bytes(path)
    )


def _decode_component(text: str, plus_is_space: bool) -> bytes:
    """Percent-decode one query name or value leniently: a stray "%" stays a literal "%"."""
    raw = to_bytes(text.replace("+", " ") if plus_is_space else text)
    if b"%" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        byte = raw[i]
        if byte == 0x25 and i + 2 < n and raw[i + 1] in _HEX and raw[i + 2] in _HEX:
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(byte)
            i += 1
    return bytes(out)


def strict_encode(value: bytes) -> str:
    """AWS's URI encoding: every byte but unreserved as %XX with uppercase hex (space is %20)."""
    return "".join(_STRICT_BYTE[b] for b in value)


QueryParam = tuple[str, str | None]


def wire_query(raw_query: str, plus_is_space: bool = True) -> list[QueryParam]:
    """Parameters of the client's query re-encoded strictly, in the client's order.

    Each name and value is decoded and re-encoded, so the origin decodes to what the client meant
    and every hop sees one unambiguous form. "+" is a space by the form-encoding convention (a
    literal plus arrives as %2B); plus_is_space=False makes it a literal plus. A value of None
    marks a name sent without "=" (kept that way on the wire; it signs as "name=").
    """
    params: list[QueryParam] = []
    for part in raw_query.split("&"):
        if not part:
            continue
        if _PLAIN_QUERY_PART.fullmatch(part):
            name, sep, value = part.partition("=")
            params.append((name, value if sep else None))
            continue
        name, sep, value = part.partition("=")
        encoded_name = strict_encode(_decode_component(name, plus_is_space))
        encoded_value = strict_encode(_decode_component(value, plus_is_space)) if sep else None
        params.append((encoded_name, encoded_value))
    return params


def query_string(params: list[QueryParam]) -> str:
    """The wire query string of wire_query()'s parameters, order kept."""
    return "&".join([name if value is None else f"{name}={value}" for name, value in params])


def canonical_query(params: list[QueryParam]) -> str:
    """SigV4 canonical query: "name=value" pairs sorted by name, then value (byte order)."""
    if not params:
        return ""
    pairs = sorted([(name, value or "") for name, value in params])
    return "&".join([f"{name}={value}" for name, value in pairs])


def canonical_headers(headers: list[tuple[str, str]]) -> tuple[str, str]:
    """Canonical headers block and signed-headers list for (lowercase name, value) pairs.

    Each value is trimmed and each run of whitespace in it (obs-fold included) becomes one
    space; repeated headers are joined with "," in the order they appear (AWS vector
    get-header-key-duplicate).
    """
    merged: dict[str, str] = {}
    for name, value in headers:
        value = " ".join(value.split())
        merged[name] = f"{merged[name]},{value}" if name in merged else value
    names = sorted(merged)
    return "".join([f"{name}:{merged[name]}\n" for name in names]), ";".join(names)
