"""Each canonicalization rule on awkward inputs, as data (a reported bug becomes one more row)."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from proxy import canonical, signing

# (client path, wire path, canonical URI for execute-api)
PATHS = [
    ("/", "/", "/"),
    ("/prod/items", "/prod/items", "/prod/items"),
    ("/stage/objects/key_$folder$", "/stage/objects/key_$folder$", "/stage/objects/key_%24folder%24"),
    ("/stage/x(1)!*", "/stage/x(1)!*", "/stage/x%281%29%21%2A"),
    ("/stage/mac@2x.png", "/stage/mac@2x.png", "/stage/mac%402x.png"),
    ("/stage/users/eu-central-1:abc/info", "/stage/users/eu-central-1:abc/info", "/stage/users/eu-central-1%3Aabc/info"),
    ("/stage/users/eu-central-1%3Aabc/info", "/stage/users/eu-central-1%3Aabc/info", "/stage/users/eu-central-1%253Aabc/info"),
    ("/stage/users/a%3ab", "/stage/users/a%3Ab", "/stage/users/a%253Ab"),
    ("/stage/cars/Citro%C3%ABn", "/stage/cars/Citro%C3%ABn", "/stage/cars/Citro%25C3%25ABn"),
    ("/stage/cars/Citroën", "/stage/cars/Citro%C3%ABn", "/stage/cars/Citro%25C3%25ABn"),
    ("/stage/this%20path", "/stage/this%20path", "/stage/this%2520path"),
    ("/stage/items/a%2Fb", "/stage/items/a%2Fb", "/stage/items/a%252Fb"),
    ("/stage//a/./b/../c/", "/stage/a/c/", "/stage/a/c/"),
    ("/stage/a/..", "/stage/", "/stage/"),
    ("/../../x", "/x", "/x"),
    ("//", "/", "/"),
    ("/a%7e%7Eb", "/a~~b", "/a~~b"),  # unreserved escapes decode (RFC 3986 6.2.2.2)
    ("/a%2e%2E/b", "/a../b", "/a../b"),
    ("/%2E%2E/b", "/b", "/b"),
    ("/100%", "/100%25", "/100%2525"),  # a stray % is a literal percent
    ("/a%zzb", "/a%25zzb", "/a%2525zzb"),
    ("/semi;colon|pipe", "/semi%3Bcolon%7Cpipe", "/semi%253Bcolon%257Cpipe"),
    ('/q"<>\\^`{}', "/q%22%3C%3E%5C%5E%60%7B%7D", "/q%2522%253C%253E%255C%255E%2560%257B%257D"),
    ("/a+b=c&d,e'f", "/a+b=c&d,e'f", "/a%2Bb%3Dc%26d%2Ce%27f"),
    ("/\udcff", "/%FF", "/%25FF"),  # an undecodable raw byte, as aiohttp's parser hands it over
]


@pytest.mark.parametrize(("raw", "wire", "uri"), PATHS)
def test_path_wire_and_canonical(raw: str, wire: str, uri: str) -> None:
    assert canonical.wire_path(raw) == wire
    assert canonical.canonical_uri(wire) == uri
    assert canonical.wire_path(wire) == wire  # the wire form is a fixed point: sign == send


@pytest.mark.parametrize(
    ("raw", "wire"),
    [("/bucket//key/./x/../y", "/bucket//key/./x/../y"), ("/b/k%2fey with space", "/b/k%2Fey%20with%20space")],
)
def test_s3_paths_are_encoded_but_never_normalized(raw: str, wire: str) -> None:
    assert canonical.wire_path(raw, normalize=False) == wire
    assert canonical.canonical_uri(wire, double_encode=False) == wire


# (client query, wire query, canonical query)
QUERIES = [
    ("", "", ""),
    ("limit=10", "limit=10", "limit=10"),
    ("token=abc%3D", "token=abc%3D", "token=abc%3D"),
    ('q=para:meter&ids=[{"id":"x"}]', "q=para%3Ameter&ids=%5B%7B%22id%22%3A%22x%22%7D%5D",
     "ids=%5B%7B%22id%22%3A%22x%22%7D%5D&q=para%3Ameter"),
    ("v&b=", "v&b=", "b=&v="),
    ("sort=_doc&size=50", "sort=_doc&size=50", "size=50&sort=_doc"),
    ("a=2&a=10&a=1&param[10]=1&param[2]=1", "a=2&a=10&a=1&param%5B10%5D=1&param%5B2%5D=1",
     "a=1&a=10&a=2&param%5B10%5D=1&param%5B2%5D=1"),
    ("q=a+b&r=C%2B%2B&s=a%20b", "q=a%20b&r=C%2B%2B&s=a%20b", "q=a%20b&r=C%2B%2B&s=a%20b"),
    ("q=a%2Fb&r=%3d", "q=a%2Fb&r=%3D", "q=a%2Fb&r=%3D"),
    ("x=%7e&y=~", "x=~&y=~", "x=~&y=~"),
    ("a=1&&b=2&", "a=1&b=2", "a=1&b=2"),
    ("e=%", "e=%25", "e=%25"),
    ("k=v=w", "k=v%3Dw", "k=v%3Dw"),
    ("B=1&a=2&_=3", "B=1&a=2&_=3", "B=1&_=3&a=2"),  # byte order: upper < "_" < lower
    ("k;x=1|2", "k%3Bx=1%7C2", "k%3Bx=1%7C2"),
    ("q=caf%C3%A9&r=café", "q=caf%C3%A9&r=caf%C3%A9", "q=caf%C3%A9&r=caf%C3%A9"),
]


@pytest.mark.parametrize(("raw", "wire", "canon"), QUERIES)
def test_query_wire_and_canonical(raw: str, wire: str, canon: str) -> None:
    params = canonical.wire_query(raw)
    assert canonical.query_string(params) == wire
    assert canonical.canonical_query(params) == canon
    assert canonical.query_string(canonical.wire_query(wire)) == wire


def test_plus_can_mean_a_literal_plus() -> None:
    params = canonical.wire_query("q=C++", plus_is_space=False)
    assert canonical.query_string(params) == "q=C%2B%2B"


@pytest.mark.parametrize(
    ("headers", "block", "signed"),
    [
        ([("host", "h"), ("x-a", "  a   b  ")], "host:h\nx-a:a b\n", "host;x-a"),
        ([("x-b", "2"), ("x-a", "1"), ("x-b", "1")], "x-a:1\nx-b:2,1\n", "x-a;x-b"),
        ([("x-a", "line1\n  line2")], "x-a:line1 line2\n", "x-a"),
    ],
)
def test_canonical_headers(headers: list[tuple[str, str]], block: str, signed: str) -> None:
    assert canonical.canonical_headers(headers) == (block, signed)


def test_amz_date_now_is_the_current_second() -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    stamp = signing.amz_date_now()
    after = datetime.now(timezone.utc)
    assert re.fullmatch(r"\d{8}T\d{6}Z", stamp)
    assert before <= datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc) <= after
