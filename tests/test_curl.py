"""The main paths with the real curl, as a user would type them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import Stack

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


async def curl(*args: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out, err


async def test_get_with_query(stack: Stack) -> None:
    code, out, _ = await curl(f"{stack.url}/prod/items?limit=10&q=caf%C3%A9&tag=a+b")
    assert code == 0
    seen = json.loads(out)
    assert seen["params"] == [["limit", "10"], ["q", "café"], ["tag", "a b"]]


async def test_post_of_a_file(stack: Stack, tmp_path: Path) -> None:
    payload = tmp_path / "payload.json"
    payload.write_bytes(json.dumps({"items": list(range(3000))}).encode())
    code, out, _ = await curl("-X", "POST", "-H", "Content-Type: application/json", "--data-binary", f"@{payload}", f"{stack.url}/prod/fn")
    assert code == 0
    seen = json.loads(out)
    assert seen["body_sha256"] == hashlib.sha256(payload.read_bytes()).hexdigest()


async def test_chunked_upload(stack: Stack, tmp_path: Path) -> None:
    payload = tmp_path / "blob.bin"
    payload.write_bytes(bytes(range(256)) * 2000)
    code, out, err = await curl(
        "-v", "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{payload}", f"{stack.url}/prod/upload"
    )
    assert code == 0 and b"Transfer-Encoding: chunked" in err
    seen = json.loads(out)
    assert (seen["body_length"], seen["body_sha256"]) == (512_000, hashlib.sha256(payload.read_bytes()).hexdigest())


async def test_h3_put_with_expect_100_continue(stack: Stack, tmp_path: Path) -> None:
    payload = tmp_path / "2kB.json"
    payload.write_bytes(json.dumps({"pad": "x" * 2000}).encode())
    code, out, err = await curl(
        "-v", "-X", "PUT", "-H", "Expect: 100-continue", "-H", "Content-Type: application/json",
        "--data-binary", f"@{payload}", f"{stack.url}/prod/doc",
    )
    assert code == 0
    assert b"HTTP/1.1 100 Continue" in err
    seen = json.loads(out)
    assert seen["body_sha256"] == hashlib.sha256(payload.read_bytes()).hexdigest()
    assert not [n for n, _ in seen["headers"] if n.lower() == "expect"]


async def test_sse_with_curl_no_buffer(stack: Stack) -> None:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sN", f"{stack.url}/prod/events?count=4&interval=0.5", stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    lags = []
    while line := await proc.stdout.readline():
        if line.startswith(b"data: "):
            lags.append(loop.time() - float(line[6:]))
    await proc.wait()
    assert len(lags) == 4 and max(lags) < 0.1, lags
