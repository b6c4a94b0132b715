"""The lenient parser on its own, fed the way aiohttp's server feeds it, in the states a socket test
cannot reach on purpose: every cut of a conversation into reads, one byte per read, llhttp paused
mid-body with the refused request line still in its own buffer, llhttp paused by a full queue of
pipelined requests, declined upgrades. Bodies, paths and order must come out as the client sent
them, each request once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import InvalidURLError
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.lenient_parser import LenientRequestParser
from test_parser_fallback import CHUNKED, LENGTH, PLAIN, TRICKY, UTF8_GET, cut, expect, get, request

LIMIT = 64 * 1024  # aiohttp pauses a body's reading past twice this much unread
QUEUE = 32  # aiohttp.web_protocol.MAX_MSG_QUEUE_SIZE: requests parsed ahead of the handler


class Connection(BaseProtocol):
    """aiohttp's server side of a connection cut down to its parser and flow control: a payload
    over its high-water mark pauses the parser, reading it resumes the parser (feed_data(b""))."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = LIMIT) -> None:
        super().__init__(loop, LenientRequestParser(self, loop, limit, max_msg_queue_size=QUEUE))
        self.queue: list[tuple[Any, Any]] = []

    def data_received(self, data: bytes) -> None:
        messages, _upgraded, _tail = self._parser.feed_data(data)
        self.queue.extend(messages)

    async def requests(self) -> list[tuple[str, str, bytes]]:
        """Handle the queue as aiohttp's server does: take a request, free its slot so the parser
        goes on, read its body."""
        handled = []
        while self.queue:
            message, payload = self.queue.pop(0)
            self._parser.message_consumed()
            self.data_received(b"")
            handled.append((message.method, message.path, await payload.read()))
        return handled


async def converse(reads: list[bytes], limit: int = LIMIT) -> list[tuple[str, str, bytes]]:
    connection = Connection(asyncio.get_running_loop(), limit)
    for data in reads:
        connection.data_received(data)
    return await connection.requests()


CONVERSATION = LENGTH + CHUNKED + get(PLAIN) + UTF8_GET + LENGTH + CHUNKED + get(PLAIN)
HEARD = expect(LENGTH, CHUNKED, get(PLAIN), UTF8_GET, LENGTH, CHUNKED, get(PLAIN))


async def test_every_cut_into_two_reads() -> None:
    for n in range(1, len(CONVERSATION)):
        assert await converse([CONVERSATION[:n], CONVERSATION[n:]]) == HEARD, n


async def test_one_byte_per_read() -> None:
    assert await converse([CONVERSATION[n : n + 1] for n in range(len(CONVERSATION))]) == HEARD


async def test_refused_line_waits_in_llhttp_while_a_body_is_paused() -> None:
    """One read holds a body past the high-water mark and the UTF-8 request after it: llhttp
    pauses inside the body, and meets the target only when the handler has read the body."""
    big = request("POST", b"/stage/up/big", bytes(range(256)) * 1024 * 3)
    connection = Connection(asyncio.get_running_loop())
    connection.data_received(big + UTF8_GET + get(PLAIN))
    assert [m.path for m, _ in connection.queue] == ["/stage/up/big"]  # llhttp stopped in the body
    assert await connection.requests() == [
        ("POST", "/stage/up/big", bytes(range(256)) * 1024 * 3), *expect(UTF8_GET, get(PLAIN))]


async def test_refused_line_waits_in_llhttp_behind_a_full_queue() -> None:
    """More pipelined requests than aiohttp queues: llhttp stops between two of them and goes on
    as the handler takes them, after the previous one's body's end was in an earlier read."""
    ahead = [get(b"/stage/cars/%d" % n) for n in range(QUEUE + 5)]
    reads = [LENGTH[:-3], LENGTH[-3:] + b"".join(ahead) + UTF8_GET + CHUNKED]
    assert await converse(reads) == expect(LENGTH, *ahead, UTF8_GET, CHUNKED)


@pytest.mark.parametrize("before", [LENGTH, CHUNKED], ids=["length", "chunked"])
async def test_ascii_target_refused_once(before: bytes) -> None:
    connection = Connection(asyncio.get_running_loop())
    connection.data_received(before[:-3])
    with pytest.raises(InvalidURLError):
        connection.data_received(before[-3:] + b"GET foo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not connection._parser._fallen_back  # llhttp's own error: the lenient parser never saw it


async def test_utf8_target_after_a_declined_upgrade() -> None:
    """aiohttp hands the bytes after an upgrade request back to its server, which feeds them again
    once it declines the upgrade (this proxy always does): they are replayed once, not twice."""
    connection = Connection(asyncio.get_running_loop())
    upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    messages, upgraded, tail = connection._parser.feed_data(upgrade + LENGTH[:-3])
    assert upgraded and tail == LENGTH[:-3]
    connection.queue.extend(messages)
    connection._parser.set_upgraded(False)  # what aiohttp's server does before feeding `tail` again
    connection.data_received(tail)
    connection.data_received(LENGTH[-3:] + UTF8_GET)
    assert await connection.requests() == [("GET", "/ws", b""), *expect(LENGTH, UTF8_GET)]


async def test_utf8_target_after_an_unknown_upgrade() -> None:
    """An upgrade aiohttp does not know makes it drop the rest of that read: nothing of it comes back."""
    connection = Connection(asyncio.get_running_loop())
    upgrade = b"GET /h2 HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
    connection.data_received(upgrade + get(PLAIN) + LENGTH[:-3])  # dropped by aiohttp
    connection.data_received(CHUNKED + UTF8_GET)
    assert await connection.requests() == [("GET", "/h2", b""), *expect(CHUNKED, UTF8_GET)]


# Any mix of requests (each with what the handler must get), bodies of either framing holding
# blank lines, request lines and raw UTF-8, UTF-8 targets, an empty line before a request.
_body = (st.binary(max_size=40) | st.sampled_from([TRICKY, b"\r\n\r\n", b"0\r\n\r\n"])).filter(bool)
_request = st.one_of(
    st.sampled_from([(r, *expect(r)) for r in (get(PLAIN), UTF8_GET)]),
    st.just((b"\r\n" + get(b"/stage/cars/blank"), ("GET", "/stage/cars/blank", b""))),
    _body.map(lambda b: (request("POST", b"/stage/up/length", b), ("POST", "/stage/up/length", b))),
    st.lists(_body, max_size=4).map(
        lambda chunks: (request("PUT", b"/stage/up/chunked", chunks=chunks), ("PUT", "/stage/up/chunked", b"".join(chunks)))
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    requests=st.lists(_request, min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=1), max_size=8),
    limit=st.sampled_from([LIMIT, 1, 8]),  # tiny read buffers: llhttp pauses inside nearly every body
)
async def test_any_conversation_cut_anywhere(
    requests: list[tuple[bytes, tuple[str, str, bytes]]], cuts: list[int], limit: int
) -> None:
    data = b"".join(sent for sent, _ in requests)
    offsets = sorted({c % len(data) for c in cuts} - {0})
    assert await converse(cut(data, *offsets) if offsets else [data], limit) == [heard for _, heard in requests]
