"""Spilled request bodies reuse their temporary files, and a reused file never leaks one body's
bytes into another: through the real proxy (the verifying upstream checks every payload hash), and
at the one point where reuse could go wrong, a sender still reading when the request ends."""

from __future__ import annotations

import hashlib
import os

import aiohttp

from conftest import Stack
from proxy import body as body_module
from proxy.body import MiB, SPILL_FILES, Body


def blob(size: int, seed: int) -> bytes:
    return hashlib.sha256(bytes([seed])).digest() * (size // 32) + bytes([seed]) * (size % 32)


def spill_inodes() -> set[int]:
    return {os.fstat(f.fileno()).st_ino for f in SPILL_FILES._idle}


async def test_a_shorter_body_in_a_reused_file_is_sent_without_the_longer_ones_tail(
    stack: Stack, client: aiohttp.ClientSession
) -> None:
    sizes = [3 * MiB + 17, 2 * MiB + 5, 3 * MiB + 1]  # each spills (past 1 MiB); the second is shorter
    used: list[set[int]] = []
    for n, size in enumerate(sizes):
        payload = blob(size, n)
        async with client.post(f"{stack.url}/stage/upload", data=payload) as resp:
            assert resp.status == 200
            seen = await resp.json()
        assert (seen["body_length"], seen["body_sha256"]) == (size, hashlib.sha256(payload).hexdigest())
        used.append(spill_inodes())
    # One upload at a time: the one file of the first body serves the next two.
    assert len(used[0]) >= 1 and used[0] == used[1] == used[2]


async def test_a_file_a_sender_still_reads_is_not_handed_to_the_next_body() -> None:
    data = blob(3 * body_module.SEND_SIZE + 10, 7)
    file = SPILL_FILES.take()
    file.write(blob(5 * body_module.SEND_SIZE, 8))  # an earlier, longer body
    SPILL_FILES.give_back(file)
    assert SPILL_FILES.take() is file
    file.write(data)
    file.flush()
    spilled = Body(hashlib.sha256(data).hexdigest(), len(data), b"", file)
    sender = spilled.payload()
    assert not isinstance(sender, (bytes, type(None)))
    first = await anext(sender)
    spilled.close()  # the request ended (an early answer) while its sender is mid-body
    other = SPILL_FILES.take()
    assert other is not file  # still in use: a new file, not this one
    SPILL_FILES.give_back(other)
    rest = [chunk async for chunk in sender]
    assert first + b"".join(rest) == data  # every byte the sender read is this body's
    assert file in SPILL_FILES._idle  # back once its last reader is done


async def test_a_sender_stopped_early_gives_the_file_back() -> None:
    file = SPILL_FILES.take()
    file.write(b"x" * (2 * body_module.SEND_SIZE))
    file.flush()
    spilled = Body("", 2 * body_module.SEND_SIZE, b"", file)
    sender = spilled.payload()
    await anext(sender)
    spilled.close()
    assert file not in SPILL_FILES._idle
    await sender.aclose()  # the upstream answered early: the connection's sender closes it
    assert file in SPILL_FILES._idle


def test_files_past_the_kept_size_or_count_are_closed_not_kept() -> None:
    big = SPILL_FILES.take()
    big.truncate(body_module.SPILL_FILE_KEPT_SIZE + 1)
    SPILL_FILES.give_back(big)
    assert big.closed
    taken = [SPILL_FILES.take() for _ in range(body_module.SPILL_FILES_KEPT + 2)]
    for file in taken:
        SPILL_FILES.give_back(file)
    assert len(SPILL_FILES._idle) == body_module.SPILL_FILES_KEPT
    assert sum(f.closed for f in taken) == 2
