"""Raw UTF-8 request targets (../shared/cases P3) anywhere on a keep-alive connection: after request
bodies of either framing, in the same write as the body's end, straddling writes, pipelined, and
with bodies after the switch to the lenient parser. Every request must reach the origin exactly once
with the path the client meant, and every response must reach the client on that connection."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from conftest import Stack
from rawhttp import RawResponse, parse_response

UTF8 = "/stage/cars/Citroën".encode()
PLAIN = b"/stage/cars/plain"
AFTER = b"/stage/cars/after"
# A body that looks like the end of a head and a whole request, with raw UTF-8 in it: a parser
# that looked for the next request inside it would send a request nobody made.
TRICKY = b"ab\r\n\r\nGET /stage/cars/Citro\xc3\xabn HTTP/1.1\r\nHost: x\r\n\r\n\xff"
BIG = bytes(range(256)) * 6144  # 1.5 MiB: past aiohttp's read buffer, so its parser pauses mid-body
PAUSE = 0.05  # between writes, so the proxy reads them apart


def request(method: str, target: bytes, body: bytes = b"", *, chunks: list[bytes] | None = None) -> bytes:
    head = method.encode() + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if chunks is not None:
        framed = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks)
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + framed + b"0\r\nX-Trailer: t\r\n\r\n"
    if body:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


def get(target: bytes) -> bytes:
    return request("GET", target)


UTF8_GET = get(UTF8)
LENGTH = request("POST", b"/stage/up/length", TRICKY)
CHUNKED = request("PUT", b"/stage/up/chunked", chunks=[TRICKY, b"x" * 17, b"\r\n"])
CHUNKED_BODY = TRICKY + b"x" * 17 + b"\r\n"
SENT = {LENGTH: ("POST", "/stage/up/length", TRICKY), CHUNKED: ("PUT", "/stage/up/chunked", CHUNKED_BODY)}


def expect(*requests: bytes) -> list[tuple[str, str, bytes]]:
    """What the origin must see for each request, in order."""
    return [SENT.get(r) or (r.split(b" ")[0].decode(), r.split(b" ")[1].decode(), b"") for r in requests]


def cut(data: bytes, *marks: int) -> list[bytes]:
    """`data` as separate writes, cut at the given offsets (negative: from the end)."""
    offsets = [0, *(m % len(data) for m in marks), len(data)]
    return [data[a:b] for a, b in zip(offsets, offsets[1:])]


async def read_one(reader: asyncio.StreamReader) -> RawResponse:
    """Exactly one response, leaving any next one on the stream (for pipelined requests)."""
    head = await reader.readuntil(b"\r\n\r\n")
    response = parse_response(head)
    if "chunked" in response.headers.get("Transfer-Encoding", ""):
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields
            pass
        response.body = body
    else:
        response.body = await reader.readexactly(int(response.headers.get("Content-Length", "0")))
    return response


async def converse(port: int, writes: list[bytes], count: int) -> list[RawResponse]:
    """Write each piece in turn on one connection, then read `count` responses from it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for n, piece in enumerate(writes):
            if n:
                await asyncio.sleep(PAUSE)
            writer.write(piece)
            await writer.drain()
        responses = []
        for _ in range(count):
            try:
                responses.append(await asyncio.wait_for(read_one(reader), 10))
            except asyncio.IncompleteReadError:
                break  # the proxy ended the connection: `check` names what came before
        return responses
    finally:
        writer.close()


def check(responses: list[RawResponse], expected: list[tuple[str, str, bytes]]) -> None:
    assert [r.status for r in responses] == [200] * len(expected), [r.body for r in responses]
    for response, (method, path, body) in zip(responses, expected):
        seen = json.loads(response.body)
        assert (seen["method"], seen["path"]) == (method, path)
        assert seen["body_sha256"] == hashlib.sha256(body).hexdigest(), (path, seen["body_length"])


def tail_with(message: bytes, after: bytes) -> list[bytes]:
    """`message` minus its last bytes as one write, then those bytes and `after` as the next: the
    proxy has the head (and its body is under way) before it reads the end and what follows."""
    return [message[:-3], message[-3:] + after]


# (what the client writes, in pieces; the requests in it, in order)
CASES = {
    "length body's end and a UTF-8 target in one write": (tail_with(LENGTH, UTF8_GET), [LENGTH, UTF8_GET]),
    "length body ends a write, UTF-8 target in the next": ([LENGTH, UTF8_GET], [LENGTH, UTF8_GET]),
    "all in one write": ([LENGTH + UTF8_GET], [LENGTH, UTF8_GET]),
    "body end and start of the request line in one write, rest of the line in the next": (
        [LENGTH[:-3], LENGTH[-3:] + UTF8_GET[:15], UTF8_GET[15:]], [LENGTH, UTF8_GET]),
    "request line cut inside a UTF-8 character": (
        cut(LENGTH + UTF8_GET, -3 - len(UTF8_GET), len(LENGTH) + UTF8_GET.index(b"\xc3") + 1), [LENGTH, UTF8_GET]),
    "chunked body's end and a UTF-8 target in one write": (tail_with(CHUNKED, UTF8_GET), [CHUNKED, UTF8_GET]),
    "chunk size line cut": (cut(CHUNKED + UTF8_GET, CHUNKED.index(b";ext") + 2), [CHUNKED, UTF8_GET]),
    "last chunk, trailer and request line straddle writes": (
        cut(CHUNKED + UTF8_GET, len(CHUNKED) - 9, len(CHUNKED) + 12), [CHUNKED, UTF8_GET]),
    "pipelined: body's end, UTF-8 target, ASCII target": (
        tail_with(LENGTH, UTF8_GET + get(PLAIN)), [LENGTH, UTF8_GET, get(PLAIN)]),
    "pipelined: body's end, ASCII target, UTF-8 target": (
        tail_with(CHUNKED, get(PLAIN) + UTF8_GET), [CHUNKED, get(PLAIN), UTF8_GET]),
    "pipelined: both framings, then UTF-8 target": (
        tail_with(LENGTH, CHUNKED + UTF8_GET), [LENGTH, CHUNKED, UTF8_GET]),
    "bodies after the switch, one write": ([UTF8_GET + LENGTH + CHUNKED], [UTF8_GET, LENGTH, CHUNKED]),
    "bodies after the switch, own writes": ([UTF8_GET, LENGTH, CHUNKED], [UTF8_GET, LENGTH, CHUNKED]),
}


@pytest.mark.parametrize("writes, requests", CASES.values(), ids=CASES.keys())
async def test_utf8_target_after_a_body(stack: Stack, writes: list[bytes], requests: list[bytes]) -> None:
    responses = await converse(stack.proxy.port, [*writes, get(AFTER)], len(requests) + 1)
    check(responses, expect(*requests, get(AFTER)))
    # Each request reached the origin once: nothing replayed twice, nothing taken from a body.
    assert [s["path"] for s in stack.gateway.seen] == [path for _, path, _ in expect(*requests, get(AFTER))]


async def test_utf8_target_after_a_body_the_parser_paused_in(stack: Stack) -> None:
    """1.5 MiB is more than aiohttp buffers: its parser stops mid-body and resumes as the proxy reads."""
    big = request("POST", b"/stage/up/big", BIG)
    responses = await converse(stack.proxy.port, [big + UTF8_GET + get(PLAIN)], 3)
    check(responses, [("POST", "/stage/up/big", BIG), *expect(UTF8_GET, get(PLAIN))])


async def test_every_write_boundary(stack: Stack) -> None:
    """The same conversation cut into two writes at every offset, on connections of their own."""
    data = LENGTH + CHUNKED + UTF8_GET + get(PLAIN)
    cuts = range(1, len(data))
    results = await asyncio.gather(*(converse(stack.proxy.port, cut(data, n), 4) for n in cuts))
    for n, responses in zip(cuts, results):
        try:
            check(responses, expect(LENGTH, CHUNKED, UTF8_GET, get(PLAIN)))
        except AssertionError as exc:
            raise AssertionError(f"cut at {n}: {data[:n][-20:]!r} | {data[n:][:20]!r}") from exc
    assert len(stack.gateway.seen) == 4 * len(cuts)


REFUSED = {
    # llhttp refuses it and so would any parser: not a UTF-8 target, so no second try.
    "ASCII target that is not a path": b"GET foo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    # A UTF-8 target the lenient parser tries, and refuses for its version.
    "UTF-8 target with a bad version": b"GET " + UTF8 + b" HTTP/9\r\nHost: 127.0.0.1\r\n\r\n",
}
# What comes before the refused request, its last write's end (the refused bytes follow in that write).
BEFORE = {
    "length body": ([LENGTH], tail_with(LENGTH, b"")),
    "chunked body": ([CHUNKED], tail_with(CHUNKED, b"")),
    "after the switch": ([UTF8_GET], [UTF8_GET, b""]),
    "length body after the switch": ([UTF8_GET, LENGTH], [UTF8_GET, *tail_with(LENGTH, b"")]),
}


@pytest.mark.parametrize("bad", REFUSED.values(), ids=REFUSED.keys())
@pytest.mark.parametrize("requests, writes", BEFORE.values(), ids=BEFORE.keys())
async def test_malformed_request_after_a_body_is_a_json_400(
    stack: Stack, requests: list[bytes], writes: list[bytes], bad: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.proxy.port)
    try:
        for piece in [*writes[:-1], writes[-1] + bad]:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(PAUSE)
        *served, refused = [await asyncio.wait_for(read_one(reader), 5) for _ in range(len(requests) + 1)]
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then the connection ends
    finally:
        writer.close()
    check(served, expect(*requests))
    assert refused.status == 400 and refused.header("Content-Type") == "application/json"
    assert refused.json()["error"] == "malformed request"
    assert len(stack.gateway.seen) == len(requests)
