"""Bytes on a socket: request targets, framings and attacks that no polite client library sends."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    closed: bool = False  # (exchange) the server ended the connection within a second
    after: bytes = b""  # (exchange) anything the server sent after this response in that second

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_request(port: int, request: bytes, timeout: float = 10.0) -> RawResponse:
    """Send bytes as they are and read one whole response (send `Connection: close` for HEAD)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(read_response(reader), timeout)
    finally:
        writer.close()
    return parse_response(data)


async def exchange(port: int, request: bytes, timeout: float = 5.0) -> RawResponse:
    """Send `request` as is, read one response, then see whether the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        response = parse_response(head)
        length = int(response.headers.get("Content-Length", "0"))
        response.body = await asyncio.wait_for(reader.readexactly(length), timeout)
        try:
            response.after = await asyncio.wait_for(reader.read(), 1.0)
            response.closed = True
        except TimeoutError:
            pass
        return response
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One whole response (framed by Content-Length, chunking, or the server closing)."""
    data = b""
    while b"\r\n\r\n" not in data or data.startswith(b"HTTP/1.1 100") and data.count(b"\r\n\r\n") < 2:
        chunk = await reader.read(65536)
        if not chunk:
            return data
        data += chunk
    interim = data.startswith(b"HTTP/1.1 100")
    head = data.rpartition(b"\r\n\r\n")[0] if interim else data.partition(b"\r\n\r\n")[0]
    length = next((int(l.split(b":", 1)[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), None)
    if length is None:
        return data + await reader.read()
    while len(data) < len(head) + 4 + length:
        chunk = await reader.read(65536)
        if not chunk:
            break
        data += chunk
    return data


def parse_response(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):  # interim responses
        head, _, body = body.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers.add(name.strip(), value.strip())
    if "chunked" in headers.get("Transfer-Encoding", ""):
        body = dechunk(body)
    return RawResponse(int(status_line.split(" ")[1]), headers, body)


def dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def get(target: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers).encode()
    return b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + extra + b"\r\n"


def request_bytes(method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{n}: {v}" for n, v in headers)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
