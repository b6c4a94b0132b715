"""`python -m bench [--quick]`: the proxy against its upstream and a minimal passthrough, one table.

Starts a local upstream (nginx, or aiohttp when nginx is absent), then one target at a time: the
upstream directly, the unsigned aiohttp passthrough (bench/passthrough.py) and the signing proxy,
each server pinned to CPU 0 while wrk, curl and the SSE client run on CPU 1. Every figure is the
median of several runs; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
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


def median_of(runs: int, once: Callable[[], float]) -> float:
    return statistics.median(once() for _ in range(runs))


def measure_target(name: str, port: int, pid: int | None, plan: Plan, scripts: tuple[Path, Path],
                   log: Callable[[str], None]) -> dict[str, float]:
    """Every figure for one target; `pid` (None for the upstream) is the process whose RSS counts."""
    url = f"http://127.0.0.1:{port}"
    get_script, post_script = scripts
    figures: dict[str, float] = {}
    errors = 0

    if pid is not None:
        figures["idle_rss_mib"] = measure.rss_mib(pid)  # started, nothing served yet
    log(f"{name}: {plan.big_mib} MiB download x{plan.runs}")
    if pid is not None:
        measure.reset_peak_rss(pid)
    figures["download_mib_s"] = median_of(plan.runs, lambda: measure.download(f"{url}/big.bin"))
    if pid is not None:
        figures["download_rss_mib"] = measure.peak_rss_mib(pid)

    log(f"{name}: {plan.post_mib} MiB POST, {plan.post_connections} conns, {plan.runs}x{plan.seconds}s")
    if pid is not None:
        measure.reset_peak_rss(pid)
    posts = [measure.wrk(f"{url}/upload", plan.post_connections, plan.seconds, post_script) for _ in range(plan.runs)]
    figures["post_rps"] = statistics.median(p.rps for p in posts)
    errors += sum(p.errors for p in posts)
    if pid is not None:
        figures["post_rss_mib"] = measure.peak_rss_mib(pid)

    if plan.warmup:
        measure.wrk(f"{url}/small.json?limit=10", 50, 1, get_script)
    for conns in (1, 50):
        log(f"{name}: small GET, {conns} conns, {plan.runs}x{plan.seconds}s")
        gets, cpu_per_request = [], []
        for _ in range(plan.runs):
            cpu_before = measure.process_cpu_seconds(pid) if pid is not None else 0.0
            gets.append(measure.wrk(f"{url}/small.json?limit=10", conns, plan.seconds, get_script))
            if pid is not None:
                served = gets[-1].rps * plan.seconds
                cpu_per_request.append((measure.process_cpu_seconds(pid) - cpu_before) / served * 1e6)
        figures[f"get{conns}_rps"] = statistics.median(g.rps for g in gets)
        figures[f"get{conns}_p50_ms"] = statistics.median(g.p50_ms for g in gets)
        figures[f"get{conns}_p99_ms"] = statistics.median(g.p99_ms for g in gets)
        if pid is not None:
            # CPU per request barely moves when other programs share the machine; req/s does.
            figures[f"get{conns}_cpu_us"] = statistics.median(cpu_per_request)
        errors += sum(g.errors for g in gets)

    log(f"{name}: SSE, {plan.sse_events} events x{plan.runs}")
    events = [measure.sse_latencies(port, plan.sse_events, plan.sse_interval_ms) for _ in range(plan.runs)]
    figures["sse_p50_ms"] = statistics.median(statistics.median(run) for run in events)
    figures["sse_max_ms"] = max(max(run) for run in events)  # "each event": the worst one counts
    figures["errors"] = errors
    return figures


def run(plan: Plan, use_nginx: bool, log: Callable[[str], None]) -> tuple[report.Results, dict[str, str]]:
    results: report.Results = {}
    busy_before, own_before, steal_before = measure.cpu_seconds()
    wall_before = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sigv4-bench-") as tmp_name:
        tmp = Path(tmp_name)
        scripts = measure.write_scripts(tmp, plan.post_mib * MiB)
        upstream = services.start_upstream(tmp, plan.big_mib * MiB, use_nginx)
        try:
            log(f"upstream: {upstream.kind} at {upstream.url}")
            results["direct"] = measure_target("direct", int(upstream.url.rsplit(":", 1)[1]), None, plan, scripts, log)
            for name, starter in (("passthrough", services.start_passthrough), ("proxy", services.start_proxy)):
                service = starter(upstream.url, tmp)
                try:
                    results[name] = measure_target(name, service.port, service.proc.pid, plan, scripts, log)
                finally:
                    service.stop()
        finally:
            upstream.stop()
    busy, own, steal = measure.cpu_seconds()
    wall = time.monotonic() - wall_before
    foreign = max(0.0, (busy - busy_before) - (own - own_before))
    context = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "upstream": upstream.kind,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {services.os.cpu_count()} CPUs",
        "pinning": f"proxy/passthrough on CPU {services.PROXY_CPU}; wrk, curl, upstream on CPU {services.LOAD_CPU}",
        "other programs' CPU": f"{foreign:.1f}s in {wall:.0f}s ({100 * foreign / wall:.0f}% of a core), steal {steal - steal_before:.1f}s",
    }
    if foreign > 0.05 * wall:
        log(f"WARNING: other programs used {foreign:.1f}s of CPU during the run: the figures are skewed")
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
    print(f"medians of {plan.runs} run(s) of {plan.seconds}s each; ratios are proxy / other\n")
    print(report.table(results, report.rows(plan.big_mib, plan.post_mib, plan.post_connections)))
    print("\nissue 7 targets:")
    print(report.targets_table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    verdicts = [{"target": t, "figure": f, "pass": ok} for t, f, ok in report.verdicts(results)]
    args.json.write_text(json.dumps({"context": context, "plan": asdict(plan), "results": results,
                                     "targets": verdicts}, indent=2) + "\n")
    log(f"done; figures in {args.json}")
    return 0
