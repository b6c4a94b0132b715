"""A raw HTTP/1.1 exchange over a socket: for targets and framings no client library sends as-is."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


async def raw_request(port: int, request: bytes, timeout: float = 10.0) -> RawResponse:
    """Send bytes as they are, read until the server closes (send `Connection: close`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(read_response(reader), timeout)
    finally:
        writer.close()
    return parse_response(data)


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One whole response (framed by Content-Length, chunking, or the server closing)."""
    data = b""
    while b"\r\n\r\n" not in data or data.startswith(b"HTTP/1.1 100") and data.count(b"\r\n\r\n") < 2:
        chunk = await reader.read(65536)
        if not chunk:
            return data
        data += chunk
    head = data.rpartition(b"\r\n\r\n")[0] if data.startswith(b"HTTP/1.1 100") else data.partition(b"\r\n\r\n")[0]
    length = next((int(l.split(b":", 1)[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), None)
    body_start = len(head) + 4
    if length is not None:  # (a HEAD answer has none: send Connection: close for those)
        while len(data) < body_start + length:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
        return data
    return data + await reader.read()


def parse_response(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):  # interim responses
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]
    if any(n.lower() == "transfer-encoding" and "chunked" in v for n, v in headers):
        body = dechunk(body)
    return RawResponse(status, headers, body)  # type: ignore[arg-type]


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
