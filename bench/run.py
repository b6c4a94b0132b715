"""`python -m bench [--quick]`: the proxy against its upstream and a minimal passthrough, one table.

Starts a local upstream (nginx, or aiohttp when nginx is absent), then one target at a time: the
upstream directly, the unsigned aiohttp passthrough (bench/passthrough.py), the signing proxy and,
for the download and the POST, a plain hashing relay (bench/hashing_relay.py). Each server is
pinned to CPU 0 while wrk, curl and the SSE client run on CPU 1. Every figure is the median of
several rounds; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench import measure, report, services

MiB = 1024 * 1024
DOWNLOADS = 9  # per round: a single 100 MiB download lasts ~70 ms and direct ones vary by +-15%
DEFAULT_JSON = services.REPO / "bench" / "results" / "last.json"


@dataclass(frozen=True)
class Plan:
    runs: int
    seconds: int
    big_mib: int
    post_mib: int
    post_connections: int
    sse_events: int
    sse_interval_ms: float
    warmup: bool


FULL = Plan(runs=3, seconds=5, big_mib=100, post_mib=5, post_connections=10, sse_events=50,
            sse_interval_ms=20, warmup=True)
QUICK = Plan(runs=1, seconds=1, big_mib=16, post_mib=5, post_connections=4, sse_events=10,
             sse_interval_ms=10, warmup=False)


def measure_once(name: str, port: int, pid: int | None, plan: Plan, scripts: tuple[Path, Path],
                 log: Callable[[str], None]) -> dict[str, float]:
    """One round of every figure for one target; `pid` (None for the upstream) is the process
    whose RSS and CPU count."""
    url = f"http://127.0.0.1:{port}"
    get_script, post_script = scripts
    figures: dict[str, float] = {}
    log(f"{name}: {plan.big_mib} MiB download, {plan.post_mib} MiB POST, small GETs, SSE")
    if pid is not None:
        figures["idle_rss_mib"] = measure.rss_mib(pid)  # started, nothing served yet
        measure.reset_peak_rss(pid)
    # At loopback speed a download lasts a fraction of a second: take the median of a few.
    figures["download_mib_s"] = statistics.median(measure.download(f"{url}/big.bin") for _ in range(DOWNLOADS))
    if pid is not None:
        figures["download_rss_mib"] = measure.peak_rss_mib(pid)
        measure.reset_peak_rss(pid)
    post = measure.wrk(f"{url}/upload", plan.post_connections, plan.seconds, post_script)
    figures["post_rps"], errors = post.rps, post.errors
    if pid is not None:
        figures["post_rss_mib"] = measure.peak_rss_mib(pid)

    if plan.warmup:  # fill the upstream connection pool before timing small requests
        measure.wrk(f"{url}/small.json?limit=10", 50, 1, get_script)
    for conns in (1, 50):
        cpu_before = measure.process_cpu_seconds(pid) if pid is not None else 0.0
        get = measure.wrk(f"{url}/small.json?limit=10", conns, plan.seconds, get_script)
        figures[f"get{conns}_rps"], figures[f"get{conns}_p50_ms"], figures[f"get{conns}_p99_ms"] = (
            get.rps, get.p50_ms, get.p99_ms)
        if pid is not None:
            # CPU per request barely moves when other programs share the machine; req/s does.
            cpu = measure.process_cpu_seconds(pid) - cpu_before
            figures[f"get{conns}_cpu_us"] = cpu / (get.rps * plan.seconds) * 1e6
        errors += get.errors

    events = measure.sse_latencies(port, plan.sse_events, plan.sse_interval_ms)
    figures["sse_p50_ms"], figures["sse_max_ms"] = statistics.median(events), max(events)
    figures["errors"] = errors
    return figures


def measure_relay(port: int, plan: Plan, post_script: Path, log: Callable[[str], None]) -> dict[str, float]:
    """The download and the POST through bench/hashing_relay.py: what this machine allows a proxy
    that hashes every request body."""
    url = f"http://127.0.0.1:{port}"
    log(f"relay: {plan.big_mib} MiB download, {plan.post_mib} MiB POST")
    download = statistics.median(measure.download(f"{url}/big.bin") for _ in range(DOWNLOADS))
    post = measure.wrk(f"{url}/upload", plan.post_connections, plan.seconds, post_script)
    return {"download_mib_s": download, "post_rps": post.rps, "errors": post.errors}


# Peaks and the worst event count as the worst round; errors add up; everything else is a median.
WORST = frozenset({"download_rss_mib", "post_rss_mib", "sse_max_ms"})


def combine(rounds: list[dict[str, float]]) -> dict[str, float]:
    combined = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        combined[key] = max(values) if key in WORST else sum(values) if key == "errors" else statistics.median(values)
    return combined


def run(plan: Plan, use_nginx: bool, log: Callable[[str], None]) -> tuple[report.Results, dict[str, str]]:
    """Rounds of direct, passthrough, proxy in turn (a burst of other load then hits all three
    alike), each server started fresh for its round and stopped before the next one starts."""
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in (*report.TARGETS_ORDER, "relay")}
    busy_before, own_before, steal_before = measure.cpu_seconds()
    wall_before = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sigv4-bench-") as tmp_name:
        tmp = Path(tmp_name)
        scripts = measure.write_scripts(tmp, plan.post_mib * MiB)
        upstream = services.start_upstream(tmp, plan.big_mib * MiB, use_nginx)
        try:
            log(f"upstream: {upstream.kind} at {upstream.url}")
            for n in range(plan.runs):
                log(f"round {n + 1} of {plan.runs}")
                direct_port = int(upstream.url.rsplit(":", 1)[1])
                rounds["direct"].append(measure_once("direct", direct_port, None, plan, scripts, log))
                for name, starter in (("passthrough", services.start_passthrough), ("proxy", services.start_proxy)):
                    service = starter(upstream.url, tmp)
                    try:
                        rounds[name].append(measure_once(name, service.port, service.proc.pid, plan, scripts, log))
                    finally:
                        service.stop()
                relay = services.start_relay(upstream.url, tmp)
                try:
                    rounds["relay"].append(measure_relay(relay.port, plan, scripts[1], log))
                finally:
                    relay.stop()
        finally:
            upstream.stop()
    sha_ms = measure.sha256_ms(plan.post_mib * MiB)
    busy, own, steal = measure.cpu_seconds()
    wall = time.monotonic() - wall_before
    foreign = max(0.0, (busy - busy_before) - (own - own_before))
    context = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "upstream": upstream.kind,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "pinning": f"proxy/passthrough on CPU {services.PROXY_CPU}; wrk, curl, upstream on CPU {services.LOAD_CPU}",
        "other programs' CPU": f"{foreign:.1f}s in {wall:.0f}s ({100 * foreign / wall:.0f}% of a core), steal {steal - steal_before:.1f}s",
    }
    if foreign > 0.05 * wall:
        log(f"WARNING: other programs used {foreign:.1f}s of CPU during the run: the figures are skewed")
    results = {name: combine(r) for name, r in rounds.items()}
    results["proxy"]["post_sha256_ms"] = sha_ms
    return results, context


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: 1 run of 1 s each, 16 MiB download")
    parser.add_argument("--runs", type=int, help="runs per figure (median taken); default 3, quick 1")
    parser.add_argument("--seconds", type=int, help="seconds per wrk run; default 5, quick 1")
    parser.add_argument("--no-nginx", dest="nginx", action="store_false", help="use the aiohttp upstream even if nginx exists")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="FILE",
                        help=f"also write the figures as JSON (default {DEFAULT_JSON.relative_to(services.REPO)})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = QUICK if args.quick else FULL
    overrides = {k: v for k, v in (("runs", args.runs), ("seconds", args.seconds)) if v is not None}
    plan = Plan(**{**asdict(plan), **overrides})
    for tool in ("wrk", "curl"):
        measure.require(tool)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    results, context = run(plan, args.nginx, log)
    print()
    print("; ".join(f"{k}: {v}" for k, v in context.items()))
    print(f"medians of {plan.runs} round(s), wrk runs of {plan.seconds}s; peak RSS and SSE max are the worst round; "
          "ratios are proxy / other\n")
    print(report.table(results, report.rows(plan.big_mib, plan.post_mib, plan.post_connections)))
    print("\nspeed targets:")
    print(report.targets_table(results))
    print()
    print(report.relay_lines(results, plan.big_mib, plan.post_mib))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    verdicts = [{"target": t, "figure": f, "pass": ok} for t, f, ok in report.verdicts(results)]
    args.json.write_text(json.dumps({"context": context, "plan": asdict(plan), "results": results,
                                     "targets": verdicts}, indent=2) + "\n")
    log(f"done; figures in {args.json}")
    return 0
