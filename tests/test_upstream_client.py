"""The proxy's own HTTP/1.1 client (proxy/upstream.py) against real servers on 127.0.0.1 that send
exact bytes: keep-alive reuse and when not to reuse, stale pooled connections, HEAD, 1xx, the three
ways a body ends, early answers, timeouts, broken answers, flow control, the request head, TLS.

A connection is "reused" when the server counted one connection for two requests; a connection
the client gave up is one the server saw closed (tests/raw_upstream.py records both).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvloop
from multidict import CIMultiDict

import proxy.upstream
from proxy.upstream import Origin, UpstreamClient, UpstreamError, UpstreamResponse, request_head
from proxy.upstream_response import HIGH_WATER
from raw_upstream import OK, Answer, Conn, RawUpstream, Script, Serve, answering, serve, stalling  # noqa: F401 (serve: a fixture)
from test_tls import self_signed

pytestmark = pytest.mark.timeout(10)  # a client that hangs is a failure, not a stuck suite


@pytest.fixture
async def upstream_client() -> AsyncIterator[UpstreamClient]:
    client = UpstreamClient(ssl.create_default_context(), connect_timeout=2.0)
    yield client
    await client.close()


async def send(
    client: UpstreamClient,
    upstream: RawUpstream,
    method: str = "GET",
    body: bytes | AsyncIterator[bytes] | None = None,
    size: int | None = None,
    timeout: float = 2.0,
) -> UpstreamResponse:
    if size is None:
        size = len(body) if isinstance(body, bytes) else 0
    return await client.request(Origin.parse(upstream.url), method, "/", CIMultiDict(), body, size, timeout)


async def fetch(client: UpstreamClient, upstream: RawUpstream, method: str = "GET") -> tuple[UpstreamResponse, bytes]:
    response = await send(client, upstream, method)
    return response, await response.read(2.0)


async def chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# -- How a body ends, and whether the connection then carries the next request -----------------

FRAMINGS: list[tuple[str, bytes, bool, bytes, bool]] = [
    # name, answer, server closes after it, body the client must see, connection reused
    ("content-length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", False, b"hello", True),
    ("chunked, extensions, trailer",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n6;x\r\n world\r\n0\r\n"
     b"X-Trailer: t\r\n\r\n", False, b"hello world", True),
    ("until close", b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end", True, b"to the end", False),
    ("HTTP/1.0 until close", b"HTTP/1.0 200 OK\r\n\r\nold", True, b"old", False),
    # RFC 9112 6.3: a transfer coding that does not end in chunked is delimited by the close.
    ("until close, not chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzipped", True, b"zipped", False),
    ("until close, chunked not last", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nzipped", True, b"zipped", False),
    ("204", b"HTTP/1.1 204 No Content\r\n\r\n", False, b"", True),
    ("304", b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n', False, b"", True),
    ("304 with the length of the unsent body", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n", False, b"", True),
    ("Connection: close", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", False, b"ok", False),
    ("HTTP/1.0", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False, b"ok", False),
    ("HTTP/1.0 keep-alive", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", False, b"ok", True),
]


@pytest.mark.parametrize(("answer", "closes", "body", "reused"), [row[1:] for row in FRAMINGS], ids=[row[0] for row in FRAMINGS])
async def test_body_framing_and_keep_alive(
    serve: Serve, upstream_client: UpstreamClient, answer: bytes, closes: bool, body: bytes, reused: bool
) -> None:
    # The server keeps a connection open unless the framing needs it closed, so a client that
    # wrongly reused one would be caught by the count.
    upstream = await serve(answering(answer, then_close=closes))
    for _ in range(2):
        response, received = await fetch(upstream_client, upstream)
        assert received == body and response.at_eof()
        assert "X-Trailer" not in response.headers
    assert upstream.connections == (1 if reused else 2)
    if not reused and not closes:
        await upstream.wait_closed_by_client(1)  # given up, not left open


# -- Stale pooled connections -------------------------------------------------------------------


async def test_idle_connection_the_upstream_closed_is_not_used(serve: Serve, upstream_client: UpstreamClient) -> None:
    async def answer_then_close_when_idle(conn: Conn) -> None:
        await conn.request()
        await conn.send(OK)
        await asyncio.sleep(0.05)  # its idle timeout, far shorter than ours

    upstream = await serve(answer_then_close_when_idle)
    assert (await fetch(upstream_client, upstream))[1] == b"ok"
    await asyncio.sleep(0.2)
    assert (await fetch(upstream_client, upstream))[1] == b"ok"
    assert upstream.connections == 2 and len(upstream.requests) == 2


def close_on_second_request(partial_answer: bytes = b"") -> Script:
    """The first connection answers once, then closes as the next request arrives (its idle timer
    fired just as we sent), after `partial_answer`; later connections answer normally."""

    async def script(conn: Conn) -> None:
        if conn.number > 1:
            return await answering(OK)(conn)
        await conn.request()
        await conn.send(OK)
        await conn.request()
        if partial_answer:
            await conn.send(partial_answer)

    return script


RACES: list[tuple[str, str, bytes | None, bool, bool]] = [
    # name, method, body, streamed, retried on a new connection (RFC 9110 9.2.2: idempotent, and
    # the body can go again; a streamed body's chunks are consumed)
    ("GET", "GET", None, False, True),
    ("HEAD", "HEAD", None, False, True),
    ("DELETE", "DELETE", None, False, True),
    ("PUT in memory", "PUT", b"x" * 100, False, True),
    ("PUT streamed", "PUT", b"x" * 100, True, False),
    ("POST", "POST", b"x" * 100, False, False),
    ("PATCH", "PATCH", b"x" * 100, False, False),
]


@pytest.mark.parametrize(("method", "body", "streamed", "retried"), [r[1:] for r in RACES], ids=[r[0] for r in RACES])
async def test_pooled_connection_closed_as_it_is_used(
    serve: Serve, upstream_client: UpstreamClient, method: str, body: bytes | None, streamed: bool, retried: bool
) -> None:
    upstream = await serve(close_on_second_request())
    await fetch(upstream_client, upstream)
    payload = chunks(body) if streamed and body else body
    size = len(body or b"")
    if retried:
        response = await send(upstream_client, upstream, method, payload, size)
        assert response.status == 200
        assert [(r.method, r.connection) for r in upstream.requests[1:]] == [(method, 1), (method, 2)]
    else:
        with pytest.raises(UpstreamError, match="closed the connection"):
            await send(upstream_client, upstream, method, payload, size)
        assert upstream.connections == 1  # not sent again: the upstream may have acted on it


async def test_no_retry_once_the_answer_began(serve: Serve, upstream_client: UpstreamClient) -> None:
    upstream = await serve(close_on_second_request(partial_answer=b"HTTP/1.1 200 OK\r\nContent-Le"))
    await fetch(upstream_client, upstream)
    with pytest.raises(UpstreamError):
        await send(upstream_client, upstream)
    assert upstream.connections == 1


async def test_connection_idle_past_keepalive_is_closed_not_used(
    serve: Serve, upstream_client: UpstreamClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy.upstream, "KEEPALIVE", 0.1)
    upstream = await serve(answering(OK))
    await fetch(upstream_client, upstream)
    await fetch(upstream_client, upstream)  # within KEEPALIVE: reused
    await asyncio.sleep(0.2)
    await fetch(upstream_client, upstream)
    assert upstream.connections == 2
    await upstream.wait_closed_by_client(1)


# -- HEAD and interim answers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "head_answer",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"],
    ids=["content-length", "chunked"],
)
async def test_head_answer_has_no_body_and_the_next_get_gets_its_own(
    serve: Serve, upstream_client: UpstreamClient, head_answer: bytes
) -> None:
    # A client reading a body after HEAD would swallow the GET's answer as it (RFC 9110 9.3.2).
    upstream = await serve(answering(head_answer, b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nafter HEAD!"))
    response, body = await fetch(upstream_client, upstream, "HEAD")
    assert (response.status, body) == (200, b"")
    assert response.headers.get("Content-Length") in ("1234", None)
    response, body = await fetch(upstream_client, upstream, "GET")
    assert body == b"after HEAD!"
    assert upstream.connections == 1


FINAL = b"HTTP/1.1 201 Created\r\nX-Final: yes\r\nContent-Length: 4\r\n\r\ndone"
INTERIMS: list[tuple[str, Answer]] = [
    ("100 Continue", (b"HTTP/1.1 100 Continue\r\n\r\n", FINAL)),
    ("103 Early Hints", (b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n", FINAL)),
    ("102, 100, 103 in one write",
     b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + FINAL),
]


@pytest.mark.parametrize("answer", [i[1] for i in INTERIMS], ids=[i[0] for i in INTERIMS])
async def test_interim_answers_are_skipped(serve: Serve, upstream_client: UpstreamClient, answer: Answer) -> None:
    upstream = await serve(answering(answer))
    for _ in range(2):
        response, body = await fetch(upstream_client, upstream)
        assert (response.status, response.reason, body) == (201, "Created", b"done")
        assert response.headers.get("X-Final") == "yes" and "Link" not in response.headers
    assert upstream.connections == 1


# -- Early answers ------------------------------------------------------------------------------


async def test_answer_before_the_whole_body_went_out_stops_it_and_the_connection(
    serve: Serve, upstream_client: UpstreamClient
) -> None:
    """An upstream may answer (403, 413) before reading the body (RFC 9112 9.3): the rest of the
    body is not sent, and the connection, out of step, is not reused."""
    dropped: list[int] = []

    async def answer_early(conn: Conn) -> None:
        if conn.number > 1:
            return await answering(OK)(conn)
        await conn.request(body_limit=64 * 1024)
        await conn.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
        dropped.append(await conn.until_client_closes())

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"a" * 64 * 1024
        await asyncio.sleep(0.3)  # the next chunk is slow to come (a slow client, a slow disk)
        yield b"b" * 64 * 1024

    upstream = await serve(answer_early)
    response = await send(upstream_client, upstream, "POST", slow_body(), 128 * 1024)
    assert (response.status, await response.read(2.0)) == (403, b"no")
    assert (await fetch(upstream_client, upstream))[1] == b"ok"
    await upstream.wait_closed_by_client(1)
    assert dropped == [0] and upstream.connections == 2


async def test_refused_body_is_not_left_flushing_into_an_upstream_that_stopped_reading(
    serve: Serve, upstream_client: UpstreamClient
) -> None:
    """After an early answer the connection is dropped at once, not held open (a socket and the
    buffered rest of the body) for as long as the upstream, no longer reading, keeps it."""

    async def refuse_and_stop_reading(conn: Conn) -> None:
        await conn.request(body_limit=64 * 1024)
        await conn.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        await asyncio.sleep(10)  # neither reads nor closes

    upstream = await serve(refuse_and_stop_reading)
    body = b"u" * (5 * 1024 * 1024)  # more than the kernel's socket buffers take
    response = await send(upstream_client, upstream, "PUT", chunks(body, 1024 * 1024), len(body))
    assert response.status == 413
    async with asyncio.timeout(1):
        while upstream.sockets_held_by_us():
            await asyncio.sleep(0.02)


# -- Timeouts, answers that are not HTTP, bodies that break off ----------------------------------


@pytest.mark.parametrize("before", [b"", b"HTTP/1.1 200 OK\r\nContent-"], ids=["silent", "half a head"])
async def test_no_headers_within_timeout(serve: Serve, upstream_client: UpstreamClient, before: bytes) -> None:
    upstream = await serve(stalling(before))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await send(upstream_client, upstream, timeout=0.3)
    assert time.monotonic() - started < 1.0
    await upstream.wait_closed_by_client(1, timeout=1.0)  # closed, not pooled with a late answer in it
    assert (await fetch(upstream_client, upstream))[1] == b"ok"
    assert upstream.connections == 2


INVALID: list[tuple[str, bytes, str]] = [
    ("garbage", b"xxxx not http\r\nsecond line\r\n\r\n", "invalid HTTP response"),
    ("bad status line", b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n", "invalid HTTP response"),
    ("101 never asked for", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
     r"switched protocols \(101\)"),
    ("two lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "invalid HTTP response"),
    ("length and chunked", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     "invalid HTTP response"),
    ("space in a header name", b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n", "invalid HTTP response"),
]


@pytest.mark.parametrize(("answer", "why"), [i[1:] for i in INVALID], ids=[i[0] for i in INVALID])
async def test_invalid_answer_is_an_upstream_error_and_closes(
    serve: Serve, upstream_client: UpstreamClient, answer: bytes, why: str
) -> None:
    upstream = await serve(stalling(answer))
    with pytest.raises(UpstreamError, match=why):
        await fetch(upstream_client, upstream)
    await upstream.wait_closed_by_client(1, timeout=1.0)
    assert (await fetch(upstream_client, upstream))[1] == b"ok"


BROKEN_BODIES: list[tuple[str, bytes, bool]] = [
    # name, what the upstream sends, whether it then closes (else it stalls until we do)
    ("bad chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n", False),
    ("closed short of its length", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", True),
    ("closed inside a chunk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\npartial", True),
    ("closed before the last chunk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n", True),
    ("chunked named on a second line, closed before the last chunk",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n", True),
]


@pytest.mark.parametrize(("answer", "closes"), [b[1:] for b in BROKEN_BODIES], ids=[b[0] for b in BROKEN_BODIES])
async def test_body_that_breaks_off_is_an_error_not_a_short_body(
    serve: Serve, upstream_client: UpstreamClient, answer: bytes, closes: bool
) -> None:
    upstream = await serve(answering(answer, then_close=True) if closes else stalling(answer))
    response = await send(upstream_client, upstream)
    assert response.status == 200
    with pytest.raises(UpstreamError):
        await response.read(2.0)
    if not closes:
        await upstream.wait_closed_by_client(1, timeout=1.0)


# -- Flow control ---------------------------------------------------------------------------------

BIG = 32 * 1024 * 1024


async def test_slow_reader_pauses_the_upstream_and_gets_every_byte(serve: Serve, upstream_client: UpstreamClient) -> None:
    block = hashlib.sha256(b"seed").digest() * (256 * 1024 // 32)  # 256 KiB, not all the same byte
    written = 0

    async def big_download(conn: Conn) -> None:
        nonlocal written
        await conn.request()
        await conn.send(f"HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n".encode())
        while written < BIG:
            await conn.send(block)  # waits in drain() while the client is not reading
            written += len(block)

    upstream = await serve(big_download)
    response = await send(upstream_client, upstream)
    await asyncio.sleep(0.5)  # not reading at all
    stalled_at = written
    await asyncio.sleep(0.2)
    # Without pausing the transport the whole 32 MiB would be in our memory by now; with it, the
    # upstream is stuck once HIGH_WATER plus the kernel's socket buffers are full (~5.5 MiB here).
    assert written == stalled_at < BIG // 2, f"the upstream wrote {written} bytes to a reader that read none"
    digest, largest = hashlib.sha256(), 0
    while chunk := await response.read_chunk(2.0):
        digest.update(chunk)
        largest = max(largest, len(chunk))
        await asyncio.sleep(0.002)  # a slow client
    assert digest.hexdigest() == hashlib.sha256(block * (BIG // len(block))).hexdigest()
    # HIGH_WATER plus at most one read from the socket (256 KiB on asyncio and uvloop).
    assert largest <= HIGH_WATER + 512 * 1024, f"{largest} bytes were held for the reader at once"


# -- Long bodies read into the response's own buffers ----------------------------------------------

PIECES = [1, 7, 1000, 65_535, 300_000, 3, 262_144, 500_000, 12]  # across and inside 256 KiB buffers


def unique_bytes(size: int, seed: bytes = b"body") -> bytes:
    """No byte pattern repeats: a buffer reused too early shows up as changed bytes."""
    return hashlib.shake_256(seed).digest(size)


def in_pieces(head: bytes, body: bytes) -> tuple[bytes, ...]:
    """The head with the body's first bytes, then the rest in PIECES-sized writes 20 ms apart."""
    pieces, start = [head + body[:100]], 100
    for size in PIECES:
        pieces.append(body[start : start + size])
        start += size
    return (*pieces, body[start:])


async def read_like_the_proxy(response: UpstreamResponse, pause: float = 0.0) -> bytes:
    """Copy each chunk (as the write to the client does), then declare it flushed."""
    received = bytearray()
    while chunk := await response.read_chunk(2.0):
        received += chunk
        response.recycle()
        await asyncio.sleep(pause)  # meanwhile reads arrive and wait, queued
    return bytes(received)


async def test_long_body_in_uneven_reads_then_the_next_answer_on_the_same_connection(
    serve: Serve, upstream_client: UpstreamClient
) -> None:
    body = unique_bytes(2 * 1024 * 1024)
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    second = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnext\r\n0\r\n\r\n"
    upstream = await serve(answering(in_pieces(head, body), second, (head + body[:10], body[10:])))
    for expected in (body, b"next", body):
        response = await send(upstream_client, upstream)
        assert await read_like_the_proxy(response) == expected and response.at_eof()
    assert upstream.connections == 1  # llhttp, left mid-body by the direct reads, was replaced


@pytest.mark.parametrize(
    ("piece", "gap", "pause"),
    [
        (100_000, 0.0, 0.0),
        (100_000, 0.0, 0.03),  # every read fills a buffer while the reader waits
        (10_000, 0.002, 0.0),
        (10_000, 0.002, 0.03),  # short reads queue up: each one extends the view before it
    ],
)
async def test_reads_queued_behind_a_recycled_buffer_are_never_overwritten(
    serve: Serve, upstream_client: UpstreamClient, piece: int, gap: float, pause: float
) -> None:
    body = unique_bytes(3 * 1024 * 1024, seed=f"{piece} {pause}".encode())
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()

    async def sender(conn: Conn) -> None:
        await conn.request()
        await conn.send(head + body[:5])
        for start in range(5, len(body), piece):
            await conn.send(body[start : start + piece])
            if gap:
                await asyncio.sleep(gap)

    upstream = await serve(sender)
    response = await send(upstream_client, upstream, timeout=5.0)
    assert await read_like_the_proxy(response, pause) == body


async def test_bytes_after_a_long_body_are_not_taken_for_it(serve: Serve, upstream_client: UpstreamClient) -> None:
    body = unique_bytes(1024 * 1024)
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with_junk = answering((head + body[:10], body[10:] + b"HTTP/1.1 200 OK\r\nJunk"))

    async def script(conn: Conn) -> None:
        await (with_junk if conn.number == 1 else answering(OK))(conn)

    upstream = await serve(script)
    response = await send(upstream_client, upstream)
    assert await read_like_the_proxy(response) == body
    assert (await fetch(upstream_client, upstream))[1] == b"ok"
    assert upstream.connections == 2  # the first one is out of step: given up, not reused


async def test_long_body_cut_short_is_an_error(serve: Serve, upstream_client: UpstreamClient) -> None:
    upstream = await serve(answering((b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nab", b"c" * 400_000),
                                     then_close=True))
    response = await send(upstream_client, upstream)
    with pytest.raises(UpstreamError):
        await read_like_the_proxy(response)


# -- Cancellation ---------------------------------------------------------------------------------


async def test_cancelled_request_closes_the_upstream_connection(serve: Serve, upstream_client: UpstreamClient) -> None:
    upstream = await serve(stalling())
    task = asyncio.create_task(send(upstream_client, upstream, timeout=30))
    async with asyncio.timeout(2):
        while not upstream.requests:
            await asyncio.sleep(0.01)
    task.cancel()  # the proxy's client hung up
    with pytest.raises(asyncio.CancelledError):
        await task
    await upstream.wait_closed_by_client(1, timeout=1.0)


async def test_closing_an_unfinished_response_closes_its_connection(serve: Serve, upstream_client: UpstreamClient) -> None:
    upstream = await serve(stalling(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nfirst bytes"))
    response = await send(upstream_client, upstream)
    assert await response.read_chunk(2.0) == b"first bytes"
    response.close()
    await upstream.wait_closed_by_client(1, timeout=1.0)
    assert (await fetch(upstream_client, upstream))[1] == b"ok"
    assert upstream.connections == 2


# -- TLS ------------------------------------------------------------------------------------------


async def test_tls_connection_is_reused(serve: Serve, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    upstream = await serve(answering(OK), tls=server_tls)
    client = UpstreamClient(ssl.create_default_context(cafile=str(cert)), connect_timeout=2.0)
    try:
        for _ in range(3):
            assert (await fetch(client, upstream))[1] == b"ok"
    finally:
        await client.close()
    assert upstream.connections == 1



@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_long_bodies_over_tls_arrive_whole_on_a_reused_connection(tmp_path: Path, loop_kind: str) -> None:
    """Over TLS the event loop decrypts into the response's buffers: never past the body's end."""
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    body = unique_bytes(3 * 1024 * 1024, seed=loop_kind.encode())
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()

    async def scenario() -> None:
        pieces = in_pieces(head, body)
        upstream = await RawUpstream(answering(pieces, OK, pieces), server_tls).start()
        client = UpstreamClient(ssl.create_default_context(cafile=str(cert)), connect_timeout=2.0)
        try:
            for expected in (body, b"ok", body):
                response = await send(client, upstream, timeout=5.0)
                assert await read_like_the_proxy(response) == expected
        finally:
            await client.close()
            await upstream.close()
        assert upstream.connections == 1

    factory = uvloop.new_event_loop if loop_kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())

# -- The request head and the Host header ---------------------------------------------------------


def test_request_head_bytes() -> None:
    head = request_head("POST", "/a/b?c=1", "example.com", CIMultiDict([("X-A", "1"), ("X-A", "2")]), 0)
    assert head == b"POST /a/b?c=1 HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\nX-A: 2\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/a\r\nX-Evil: 1", {}),
        ("/a\nX", {}),
        ("/a", {"X-A": "1\r\nX-Evil: 1"}),
        ("/a", {"X-A": "1\nX-Evil: 1"}),
        ("/a", {"X-A": "1\rX-Evil: 1"}),
        ("/a", {"X-A\r\nX-Evil": "1"}),
    ],
    ids=["CRLF in target", "LF in target", "CRLF in value", "LF in value", "CR in value", "CRLF in name"],
)
def test_request_head_refuses_line_breaks(target: str, headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="line break"):
        request_head("GET", target, "example.com", CIMultiDict(headers), 0)


@pytest.mark.parametrize(
    ("method", "size", "length"),
    [("GET", 0, None), ("HEAD", 0, None), ("DELETE", 0, None), ("OPTIONS", 0, None),
     ("POST", 0, "0"), ("PUT", 0, "0"), ("PATCH", 0, "0"), ("POST", 3, "3"), ("GET", 3, "3")],
)
async def test_content_length_on_the_wire(
    serve: Serve, upstream_client: UpstreamClient, method: str, size: int, length: str | None
) -> None:
    # RFC 9110 8.6: a POST/PUT/PATCH without a body still says so, or some servers wait for one.
    upstream = await serve(answering(b"HTTP/1.1 204 No Content\r\n\r\n"))
    response = await send(upstream_client, upstream, method, b"abc"[:size] or None)
    assert response.status == 204
    seen = upstream.requests[0]
    assert seen.header("Content-Length") == length and seen.body == b"abc"[:size]
    assert seen.header("Host") == f"127.0.0.1:{upstream.port}"


@pytest.mark.parametrize(
    ("origin", "secure", "host", "port", "host_header"),
    [
        ("http://example.com", False, "example.com", 80, "example.com"),
        ("http://example.com:80", False, "example.com", 80, "example.com"),
        ("https://example.com:443", True, "example.com", 443, "example.com"),
        ("https://example.com:8443", True, "example.com", 8443, "example.com:8443"),
        ("http://[::1]:8080", False, "::1", 8080, "[::1]:8080"),
        ("https://[2001:db8::1]", True, "2001:db8::1", 443, "[2001:db8::1]"),
    ],
)
def test_origin_host_header(origin: str, secure: bool, host: str, port: int, host_header: str) -> None:
    # RFC 9110 7.2: Host is the authority; the port only when it is not the scheme's default.
    assert Origin.parse(origin) == Origin(secure, host, port, host_header)


@pytest.mark.parametrize("origin", ["ftp://example.com", "example.com", "http://", "http://:80"])
def test_origin_refuses_what_is_not_http(origin: str) -> None:
    with pytest.raises(ValueError):
        Origin.parse(origin)


async def test_every_address_of_the_host_is_tried(
    serve: Serve, upstream_client: UpstreamClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name with several addresses (CloudFront's: IPv6 and IPv4) where the first refuses: the
    connection is made to the next one (Happy Eyeballs, RFC 8305), not reported as unreachable.
    Only the resolver's answer is staged; both connection attempts are real, on 127.0.0.1."""
    import socket

    upstream = await serve(answering(OK))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refusing = closed.getsockname()[1]  # bound, never listening: connecting is refused
        loop = asyncio.get_running_loop()
        stream = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
        resolved = [(*stream, ("127.0.0.1", refusing)), (*stream, ("127.0.0.1", upstream.port))]

        async def getaddrinfo(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
            assert host == "multi.example" and port == 443
            return resolved

        monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
        origin = Origin(secure=False, host="multi.example", port=443, host_header="multi.example")
        response = await upstream_client.request(origin, "GET", "/", CIMultiDict(), None, 0, 2.0)
        assert (response.status, await response.read(2.0)) == (200, b"ok")
    assert upstream.connections == 1 and upstream.requests[0].header("Host") == "multi.example"
