"""Counters and histograms in Prometheus's text exposition format, with no dependency.

The proxy needs four kinds of number (counts, sums, a latency histogram, a few values read at
scrape time), which is a page of code; the format is
https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator

Labels = tuple[str, ...]
# Seconds: from a cache hit at CloudFront to a slow Lambda cold start and a long download.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value == int(value) else repr(value)


def sample(name: str, names: Labels, values: Labels, value: float) -> str:
    if not names:
        return f"{name} {_number(value)}"
    pairs = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values))
    return f"{name}{{{pairs}}} {_number(value)}"


class Counter:
    """A monotonically increasing count per label set (name must end in _total)."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Labels = ()) -> None:
        self.name, self.help, self.labels = name, help_text, labels
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def set(self, labels: Labels, value: float) -> None:
        """Report a count kept elsewhere (read at scrape time, like a Prometheus collector)."""
        self.values[labels] = value

    def lines(self) -> Iterator[str]:
        for labels, value in sorted(self.values.items()):
            yield sample(self.name, self.labels, labels, value)


class Gauge(Counter):
    """A value that may go down."""

    kind = "gauge"


class Histogram:
    """Cumulative buckets, sum and count per label set."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: Labels = (), buckets: Iterable[float] = LATENCY_BUCKETS):
        self.name, self.help, self.labels = name, help_text, labels
        self.buckets = tuple(sorted(buckets))
        self.values: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        entry = self.values.get(labels)
        if entry is None:  # not setdefault: that would build the empty lists on every call
            entry = self.values[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        counts, total = entry
        counts[bisect.bisect_left(self.buckets, value)] += 1  # le is inclusive: value <= bound
        total[0] += value

    def lines(self) -> Iterator[str]:
        names = (*self.labels, "le")
        for labels, (counts, total) in sorted(self.values.items()):
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts):
                running += count
                yield sample(f"{self.name}_bucket", names, (*labels, _number(bound)), running)
            yield sample(f"{self.name}_sum", self.labels, labels, total[0])
            yield sample(f"{self.name}_count", self.labels, labels, running)


Metric = Counter | Gauge | Histogram


def render(metrics: Iterable[Metric]) -> str:
    """The text exposition of every metric, HELP and TYPE lines first."""
    out: list[str] = []
    for metric in metrics:
        out.append(f"# HELP {metric.name} {metric.help}")
        out.append(f"# TYPE {metric.name} {metric.kind}")
        out.extend(metric.lines())
    return "\n".join(out) + "\n"
