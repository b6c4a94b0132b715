"""Bytes on a socket: what HTTP clients (and attackers) can send that no polite client library will."""

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
    closed: bool  # the server ended the connection within a second of this response
    after: bytes  # anything the server sent after this response in that second

    def json(self) -> Any:
        return json.loads(self.body)


async def exchange(port: int, request: bytes, timeout: float = 5.0) -> RawResponse:
    """Send `request` as is, read one response, then see whether the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers.add(name.strip(), value.strip())
        length = int(headers.get("Content-Length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), timeout)
        try:
            after = await asyncio.wait_for(reader.read(), 1.0)
            closed = True
        except TimeoutError:
            after, closed = b"", False
        return RawResponse(int(status_line.split(" ")[1]), headers, body, closed, after)
    finally:
        writer.close()


def request_bytes(method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{n}: {v}" for n, v in headers)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
