"""The benchmark harness runs end to end: upstream, passthrough, proxy, every measurement, the table.

Speed is never asserted here (a loaded CI machine is not a benchmark machine); this proves the
harness itself works, so the figures it prints in a real run come from real measurements.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from bench import services

REPO = Path(__file__).resolve().parent.parent
FIGURES = {
    "direct": {"get1_rps", "get1_p50_ms", "get1_p99_ms", "get50_rps", "get50_p50_ms", "get50_p99_ms",
               "download_mib_s", "post_rps", "sse_p50_ms", "sse_max_ms"},
}
FIGURES["passthrough"] = FIGURES["direct"] | {"download_rss_mib", "post_rss_mib", "idle_rss_mib", "get1_cpu_us",
                                               "get50_cpu_us"}
FIGURES["proxy"] = FIGURES["passthrough"]


@pytest.mark.skipif(not (shutil.which("wrk") and shutil.which("curl")), reason="needs wrk and curl")
@pytest.mark.timeout(90)
def test_quick_bench_measures_every_figure_for_every_target(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=80)
    assert run.returncode == 0, run.stderr[-3000:]

    data = json.loads(out.read_text())
    for target, figures in FIGURES.items():
        got = data["results"][target]
        assert figures <= got.keys(), (target, figures - got.keys())
        # Real traffic flowed: every rate, latency and RSS is a positive measurement, no errors.
        assert all(got[f] > 0 for f in figures), (target, got)
        assert got["errors"] == 0, (target, got)
    verdicts = data["targets"]
    assert len(verdicts) == 5 and all(isinstance(v["pass"], bool) for v in verdicts)
    for line in ("small GET, 50 conns", "MiB download", "MiB POST", "SSE event latency", "speed targets:",
                 "reference: bench/hashing_relay.py"):
        assert line in run.stdout
    assert data["results"]["proxy"]["post_sha256_ms"] > 0
    relay = data["results"]["relay"]  # the hashing relay carried the download and the POSTs
    assert relay["download_mib_s"] > 0 and relay["post_rps"] > 0 and relay["errors"] == 0, relay
    assert run.stdout.count("PASS  ") + run.stdout.count("FAIL  ") == len(verdicts)


async def test_aiohttp_upstream_serves_what_the_bench_needs_without_nginx(tmp_path: Path) -> None:
    """The fallback upstream (used when nginx is absent) answers every path the bench requests."""
    upstream = services.start_upstream(tmp_path, 3 * services.MiB + 5, use_nginx=False)
    try:
        assert upstream.kind == "aiohttp"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{upstream.url}/small.json?limit=10") as resp:
                assert resp.status == 200 and await resp.read() == services.SMALL_JSON
            async with session.get(f"{upstream.url}/big.bin") as resp:
                assert resp.status == 200 and len(await resp.read()) == 3 * services.MiB + 5
            async with session.post(f"{upstream.url}/upload", data=b"x" * (5 * services.MiB)) as resp:
                assert resp.status == 200
            async with session.get(f"{upstream.url}/events?count=3&interval_ms=1") as resp:
                data = [line for line in (await resp.text()).splitlines() if line.startswith("data: ")]
            # Each event carries its send time on the host-wide monotonic clock, in the past.
            assert len(data) == 3 and all(0 < int(d[6:]) <= time.monotonic_ns() for d in data)
    finally:
        upstream.stop()
