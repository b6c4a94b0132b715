"""The table: each figure for the upstream directly, the baseline passthrough and the proxy, with
the proxy's ratios against both, then the issue's targets with PASS/FAIL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Results = dict[str, dict[str, float]]
TARGETS_ORDER = ("direct", "passthrough", "proxy")


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str


def rows(big_mib: int, post_mib: int, post_connections: int) -> list[Row]:
    return [
        Row("get1_rps", "small GET, 1 conn", "req/s"),
        Row("get1_p50_ms", "  p50 latency", "ms"),
        Row("get1_p99_ms", "  p99 latency", "ms"),
        Row("get1_cpu_us", "  CPU per request", "us"),
        Row("get50_rps", "small GET, 50 conns", "req/s"),
        Row("get50_p50_ms", "  p50 latency", "ms"),
        Row("get50_p99_ms", "  p99 latency", "ms"),
        Row("get50_cpu_us", "  CPU per request", "us"),
        Row("download_mib_s", f"{big_mib} MiB download", "MiB/s"),
        Row("download_rss_mib", "  peak RSS", "MiB"),
        Row("post_rps", f"{post_mib} MiB POST, {post_connections} conns", "req/s"),
        Row("post_rss_mib", "  peak RSS", "MiB"),
        Row("idle_rss_mib", "RSS after start-up", "MiB"),
        Row("sse_p50_ms", "SSE event latency p50", "ms"),
        Row("sse_max_ms", "  max (every event)", "ms"),
        Row("errors", "wrk errors (socket/non-2xx)", "count"),
    ]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def table(results: Results, table_rows: list[Row]) -> str:
    header = ["measure", "unit", *TARGETS_ORDER, "proxy/direct", "proxy/passthrough"]
    lines = [header]
    for row in table_rows:
        values = [results.get(t, {}).get(row.key) for t in TARGETS_ORDER]
        ratios = [_ratio(values[2], values[0]), _ratio(values[2], values[1])]
        cells = [_fmt(v) for v in values]
        if row.key == "errors":
            ratios, cells = ["", ""], ["-" if v is None else str(int(v)) for v in values]
        lines.append([row.label, row.unit, *cells, *ratios])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(line[2:], widths[2:])]
        out.append("  ".join(cells))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: a description, the figure it checks, and the check."""

    text: str
    figure: Callable[[Results], str]
    holds: Callable[[Results], bool]


def _get(results: Results, target: str, key: str) -> float:
    return results[target][key]


TARGETS = [
    Target(
        "small GETs, 50 conns: proxy req/s >= 1.3x passthrough",
        lambda r: f"{_get(r, 'proxy', 'get50_rps') / _get(r, 'passthrough', 'get50_rps'):.2f}x",
        lambda r: _get(r, "proxy", "get50_rps") >= 1.3 * _get(r, "passthrough", "get50_rps"),
    ),
    Target(
        "small GETs, 1 conn: added p50 latency <= 0.3 ms over direct",
        lambda r: f"+{_get(r, 'proxy', 'get1_p50_ms') - _get(r, 'direct', 'get1_p50_ms'):.3f} ms",
        lambda r: _get(r, "proxy", "get1_p50_ms") - _get(r, "direct", "get1_p50_ms") <= 0.3,
    ),
    Target(
        "download: >= 0.9x direct MiB/s, peak RSS < 64 MiB",
        lambda r: f"{_get(r, 'proxy', 'download_mib_s') / _get(r, 'direct', 'download_mib_s'):.2f}x, "
        f"{_get(r, 'proxy', 'download_rss_mib'):.1f} MiB",
        lambda r: _get(r, "proxy", "download_mib_s") >= 0.9 * _get(r, "direct", "download_mib_s")
        and _get(r, "proxy", "download_rss_mib") < 64,
    ),
    Target(
        "POST: >= 0.5x direct req/s, peak RSS < 64 MiB",
        lambda r: f"{_get(r, 'proxy', 'post_rps') / _get(r, 'direct', 'post_rps'):.2f}x, "
        f"{_get(r, 'proxy', 'post_rss_mib'):.1f} MiB",
        lambda r: _get(r, "proxy", "post_rps") >= 0.5 * _get(r, "direct", "post_rps")
        and _get(r, "proxy", "post_rss_mib") < 64,
    ),
    Target(
        "SSE: every event through the proxy within 5 ms of being sent",
        lambda r: f"max {_get(r, 'proxy', 'sse_max_ms'):.2f} ms",
        lambda r: _get(r, "proxy", "sse_max_ms") <= 5.0,
    ),
]


def verdicts(results: Results) -> list[tuple[str, str, bool]]:
    return [(t.text, t.figure(results), t.holds(results)) for t in TARGETS]


def targets_table(results: Results) -> str:
    found = verdicts(results)
    width = max(len(text) for text, _, _ in found)
    return "\n".join(f"{'PASS' if ok else 'FAIL'}  {text.ljust(width)}  {figure}" for text, figure, ok in found)


def relay_lines(results: Results, big_mib: int, post_mib: int) -> str:
    """The hashing relay's figures (bench/hashing_relay.py): what this machine allows a proxy that
    must hash every request body, and the proxy against that."""
    direct, relay, proxy = results["direct"], results["relay"], results["proxy"]
    sha_ms = proxy["post_sha256_ms"]
    return "\n".join([
        "reference: bench/hashing_relay.py, blocking threads that only hash request bodies and forward",
        f"  {big_mib} MiB download  {relay['download_mib_s']:,.0f} MiB/s = "
        f"{relay['download_mib_s'] / direct['download_mib_s']:.2f}x direct (the proxy: "
        f"{proxy['download_mib_s'] / relay['download_mib_s']:.2f}x the relay)",
        f"  {post_mib} MiB POST  {relay['post_rps']:,.1f} req/s = {relay['post_rps'] / direct['post_rps']:.2f}x direct"
        f" (the proxy: {proxy['post_rps'] / relay['post_rps']:.2f}x the relay; SHA-256 of the body alone:"
        f" {sha_ms:.2f} ms on the proxy's CPU)",
    ])
