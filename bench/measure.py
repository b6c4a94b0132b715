"""One measurement each: wrk for request rates and latency, curl for the large download, the SSE
client for event latency, /proc for peak RSS. The load side always runs on the load CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.services import LOAD_CPU, PROXY_CPU, REPO, pinned

MiB = 1024 * 1024

# wrk's summary as one JSON line (latency in microseconds), instead of its human-readable table.
WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""
WRK_POST = """
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
"""


@dataclass(frozen=True)
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"bench: {tool} is not installed (Debian: apt-get install {tool})")
    return path


def write_scripts(tmp: Path, post_size: int) -> tuple[Path, Path]:
    """The wrk scripts for GETs and for POSTs of a `post_size` body."""
    body = tmp / "post.bin"
    body.write_bytes(bytes(range(256)) * (post_size // 256) + b"x" * (post_size % 256))
    get_script, post_script = tmp / "get.lua", tmp / "post.lua"
    get_script.write_text(WRK_DONE)
    post_script.write_text(WRK_POST.replace("{body}", str(body)) + WRK_DONE)
    return get_script, post_script


def wrk(url: str, connections: int, seconds: int, script: Path) -> LoadResult:
    argv = [require("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url]
    out = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, text=True, timeout=seconds + 30)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-1000:]} {out.stderr[-1000:]}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    return LoadResult(
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=data["errors"],
    )


def download(url: str) -> float:
    """MiB/s of one download to /dev/null, as curl measures it."""
    argv = [require("curl"), "-sS", "--fail", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}", url]
    out = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"curl {url} failed: {out.stderr.strip()}")
    speed, _size = out.stdout.split()
    return float(speed) / MiB


def sse_latencies(port: int, count: int, interval_ms: float) -> list[float]:
    """Per-event latency in ms, through the server on `port` (the client runs on the load CPU)."""
    path = f"/events?count={count}&interval_ms={interval_ms:g}"
    argv = [sys.executable, "-m", "bench.sse_client", "127.0.0.1", str(port), path]
    out = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, text=True, cwd=REPO,
                         timeout=30 + count * interval_ms / 1000)
    if out.returncode != 0:
        raise RuntimeError(f"SSE client failed: {out.stderr[-1000:]}")
    latencies = [us / 1000 for us in json.loads(out.stdout)]
    if len(latencies) != count:
        raise RuntimeError(f"SSE client saw {len(latencies)} of {count} events")
    return latencies


SHA256_TIMER = """
import hashlib, statistics, sys, time
size = int(sys.argv[1])
block = bytes(range(256)) * 512
def once():
    digest, left, start = hashlib.sha256(), size, time.perf_counter()
    while left > 0:
        digest.update(block if left >= len(block) else block[:left])
        left -= len(block)
    digest.hexdigest()
    return time.perf_counter() - start
print(statistics.median(once() for _ in range(7)) * 1000)
"""


def sha256_ms(size: int) -> float:
    """Milliseconds for SHA-256 of `size` bytes in 128 KiB pieces on the proxy's CPU: the work the
    payload hash alone adds to each POST there (DESIGN.md fact 6), whatever the proxy's code."""
    argv = [sys.executable, "-c", SHA256_TIMER, str(size)]
    out = subprocess.run(pinned(PROXY_CPU, argv), capture_output=True, text=True, timeout=60, check=True)
    return float(out.stdout)


def reset_peak_rss(pid: int) -> None:
    """Restart VmHWM at the current RSS, so the next peak is this workload's (proc(5) clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def peak_rss_mib(pid: int) -> float:
    return _status_mib(pid, "VmHWM")


def rss_mib(pid: int) -> float:
    return _status_mib(pid, "VmRSS")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (proc(5) stat fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> tuple[float, float, float]:
    """(all CPUs' busy time, this process's and its reaped children's, hypervisor steal) so far.

    The difference between the first two over a run is CPU that other programs used meanwhile: a
    benchmark shares the machine, and a test suite running beside it skews every figure.
    """
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    own = os.times()
    return (user + nice + system) / tick, own.user + own.system + own.children_user + own.children_system, steal / tick
