"""Request body intake: the payload hash needs the whole body before the headers go out.

SHA-256 is computed while reading; bodies up to `spill_threshold` stay in memory, larger ones
spill to an anonymous temporary file so memory stays flat; past `max_size` the request is refused
with 413 (DESIGN.md fact 6). A spooled body can be sent again (a retry after a credential refresh).
Spill files are reused by later bodies (SpillFiles).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import IO

from aiohttp import web

from proxy.errors import ProxyError
from proxy.signing import EMPTY_SHA256

MiB = 1024 * 1024
# Each upload in flight holds one such read plus what the socket has not taken yet: with ten
# 5 MiB uploads at once, 1 MiB reads took the proxy's peak RSS from ~65 to ~73 MiB.
SEND_SIZE = 64 * 1024
# Idle spill files kept for reuse, and the largest one kept. A new temporary file costs its
# creation, the allocation of its blocks as it grows and their release at close, where overwriting
# a kept file's cached pages is a copy: on ext4, ten concurrent 5 MiB POSTs took 12.2 ms of the
# proxy's one core per POST with a new file each, 9.9 ms with kept ones (bench/, same run).
SPILL_FILES_KEPT = 8
SPILL_FILE_KEPT_SIZE = 16 * MiB


class SpillFiles:
    """Anonymous temporary files handed out for spilled bodies and taken back for the next ones.

    Bounded (SPILL_FILES_KEPT files of SPILL_FILE_KEPT_SIZE at most), so what stays held in the page
    cache, or in memory where the temporary directory is a tmpfs (the container's), is bounded too.
    A kept file keeps old bytes past the end of the next body: Body.size says where a body ends."""

    def __init__(self) -> None:
        self._idle: list[IO[bytes]] = []

    def take(self) -> IO[bytes]:
        if self._idle:
            file = self._idle.pop()
            file.seek(0)
            return file
        return tempfile.TemporaryFile(prefix="sigv4-proxy-body-")

    def give_back(self, file: IO[bytes]) -> None:
        if len(self._idle) < SPILL_FILES_KEPT and os.fstat(file.fileno()).st_size <= SPILL_FILE_KEPT_SIZE:
            self._idle.append(file)
        else:
            file.close()


SPILL_FILES = SpillFiles()


@dataclass(slots=True)
class Body:
    sha256: str = EMPTY_SHA256
    size: int = 0
    data: bytes = b""
    file: IO[bytes] | None = field(default=None, repr=False)
    # A spilled body's file goes back to SPILL_FILES only when the request is done with it (close)
    # and no sender still reads it: after an early answer the upstream client's sender may still
    # be running when the request ends, and a reused file would hand it another body's bytes.
    _senders: int = field(default=0, repr=False)
    _closed: bool = field(default=False, repr=False)

    def payload(self) -> bytes | AsyncGenerator[bytes, None] | None:
        """What to hand the HTTP client; each call starts from the first byte, so a body can be
        sent again (a retry after a credential refresh)."""
        if self.file is not None:
            return self._spilled_chunks()
        return self.data if self.size else None

    async def _spilled_chunks(self) -> AsyncGenerator[bytes, None]:
        """A spilled body in SEND_SIZE reads. The file was just written, so each read comes from the
        page cache in a fraction of a millisecond: far cheaper than aiohttp's file payload, which
        hops to a thread for every 64 KiB (5 MiB POSTs ran at 0.18x direct speed with it)."""
        if self.file is None:
            raise OSError("the spilled request body was already released")
        fd = self.file.fileno()
        self._senders += 1
        try:
            offset = 0
            while offset < self.size:
                # Never past self.size: a reused file may hold an earlier, longer body's bytes there.
                chunk = os.pread(fd, min(SEND_SIZE, self.size - offset), offset)
                if not chunk:
                    raise OSError(f"spilled request body ended at {offset} of {self.size} bytes")
                offset += len(chunk)
                yield chunk
        finally:
            self._senders -= 1
            self._release()

    def close(self) -> None:
        self._closed = True
        self._release()

    def _release(self) -> None:
        if self._closed and not self._senders and self.file is not None:
            SPILL_FILES.give_back(self.file)
            self.file = None


EMPTY = Body()


def _too_large(max_size: int) -> ProxyError:
    return ProxyError(
        413,
        "request body too large",
        f"the body exceeds the limit of {max_size} bytes (raise --max-body-size if the upstream accepts more)",
        close=True,
    )


def check_declared_length(request: web.BaseRequest, max_size: int) -> None:
    """Refuse before reading (and before any 100 Continue) when Content-Length is already too big."""
    declared = request.content_length
    if declared is not None and declared > max_size:
        raise _too_large(max_size)


async def read_body(
    request: web.BaseRequest, max_size: int, idle_timeout: float | None = None, spill_threshold: int = MiB
) -> Body:
    """The whole body, hashed; 408 when the client sends nothing for `idle_timeout` seconds
    (without it, a client that stops mid-body would hold its connection and spill file forever)."""
    if not request.body_exists:
        return EMPTY
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(idle_timeout) as deadline:
            return await _read(request, max_size, spill_threshold, deadline, idle_timeout, loop)
    except TimeoutError:
        raise ProxyError(
            408, "request body stalled", f"the client sent no body bytes for {idle_timeout:g}s (--idle-timeout)",
            close=True,
        ) from None


async def _read(
    request: web.BaseRequest,
    max_size: int,
    spill_threshold: int,
    deadline: asyncio.Timeout,
    idle_timeout: float | None,
    loop: asyncio.AbstractEventLoop,
) -> Body:
    check_declared_length(request, max_size)
    if request.headers.get("Expect", "").lower() == "100-continue":
        # Only now, with the size accepted, does the client start sending (RFC 9110 10.1.1).
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    digest = hashlib.sha256()
    buffer = bytearray()
    # A body announced as large goes to disk from its first byte, not after 1 MiB in memory: with
    # many large uploads in flight that buffer is most of the proxy's memory.
    spill: IO[bytes] | None = None
    if (request.content_length or 0) > spill_threshold:
        spill = SPILL_FILES.take()
    size = 0
    moved = loop.time()
    # Re-arming the deadline on every chunk costs a timer each; a few times per idle period is enough.
    rearm = min(1.0, idle_timeout / 4) if idle_timeout is not None else 0.0
    try:
        # Chunks as they arrived: read(n) would slice and join them, one more copy of every byte.
        async for chunk, _ in request.content.iter_chunks():
            if idle_timeout is not None and loop.time() - moved > rearm:
                moved = loop.time()
                deadline.reschedule(moved + idle_timeout)
            size += len(chunk)
            if size > max_size:
                raise _too_large(max_size)
            digest.update(chunk)
            if spill is not None:
                spill.write(chunk)
            elif len(buffer) + len(chunk) > spill_threshold:
                spill = SPILL_FILES.take()
                spill.write(buffer)
                spill.write(chunk)
                buffer = bytearray()
            else:
                buffer += chunk
    except BaseException:
        if spill is not None:
            SPILL_FILES.give_back(spill)
        raise
    if spill is not None:
        spill.flush()
        return Body(digest.hexdigest(), size, b"", spill)
    return Body(digest.hexdigest(), size, bytes(buffer))
