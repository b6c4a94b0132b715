"""What the proxy tells about each request: the access log line, the metrics, the 403 diagnosis
and (with --debug-signing) the canonical request and string to sign. Never a secret."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from aiohttp import web
from yarl import URL

from proxy import diagnose, redact
from proxy.config import Route
from proxy.errors import ProxyError
from proxy.logs import log_access
from proxy.metrics import Counter, Gauge, Histogram, Metric, render
from proxy.signing import SignedRequest
from proxy.upstream import UpstreamResponse

if TYPE_CHECKING:
    from proxy.forward import ActiveRoute

log = logging.getLogger("sigv4_proxy")
signing_log = logging.getLogger("sigv4_proxy.signing")

# API Gateway's 403 bodies are a few hundred bytes; the cap keeps a huge 403 streaming, not buffered.
REFUSAL_BODY_LIMIT = 64 * 1024
REFUSAL_READ_WAIT = 2.0
NO_ROUTE = "-"  # the route label of requests no route served (status endpoints, 404, bad targets)


@dataclass(slots=True)
class Exchange:
    """One request's story, filled in as it goes, for the access log and the metrics."""

    method: str
    path: str  # without the query: query values may carry tokens or signatures
    started: float = field(default_factory=time.monotonic)
    status: int | None = None  # set when no response object tells it (an internal error)
    route: str = NO_ROUTE
    stage: str = "intake"  # intake -> signing -> sending -> streaming
    bytes_in: int = 0
    bytes_out: int = 0
    streamed: bool = False
    upstream_ttfb: float | None = None
    upstream_error: str | None = None
    signing_failure: str | None = None
    diagnosis: diagnose.Diagnosis | None = None

    def failed(self, exc: ProxyError) -> None:
        """Count a failure against the step it happened in."""
        if self.stage == "signing":
            self.signing_failure = exc.error
        elif self.stage in ("sending", "streaming"):
            self.upstream_error = exc.error


class ProxyMetrics:
    """Everything /metrics reports; credential numbers are read from the sources at scrape time."""

    def __init__(self) -> None:
        self.requests = Counter("sigv4_proxy_requests_total", "Requests answered, by route and status.", ("route", "status"))
        self.latency = Histogram("sigv4_proxy_request_duration_seconds", "Time from request to last byte sent.", ("route",))
        self.ttfb = Histogram("sigv4_proxy_upstream_ttfb_seconds", "Time from sending upstream to its response headers.", ("route",))
        self.bytes_in = Counter("sigv4_proxy_request_bytes_total", "Request body bytes received from clients.", ("route",))
        self.bytes_out = Counter("sigv4_proxy_response_bytes_total", "Response body bytes sent to clients.", ("route",))
        self.upstream_errors = Counter("sigv4_proxy_upstream_errors_total", "Upstream failures (unreachable, timeout, broken body).", ("route", "error"))
        self.signing_failures = Counter("sigv4_proxy_signing_failures_total", "Requests that could not be signed.", ("route", "error"))
        self.refusals = Counter("sigv4_proxy_auth_refusals_total", "Upstream 403 refusals, by diagnosed cause.", ("route", "cause"))

    def record(self, exchange: Exchange, status: int, total: float) -> None:
        route = (exchange.route,)
        self.requests.inc((exchange.route, str(status)))
        self.latency.observe(route, total)
        self.bytes_in.inc(route, exchange.bytes_in)
        self.bytes_out.inc(route, exchange.bytes_out)
        if exchange.upstream_ttfb is not None:
            self.ttfb.observe(route, exchange.upstream_ttfb)
        if exchange.upstream_error:
            self.upstream_errors.inc((exchange.route, exchange.upstream_error))
        if exchange.signing_failure:
            self.signing_failures.inc((exchange.route, exchange.signing_failure))
        if exchange.diagnosis:
            self.refusals.inc((exchange.route, exchange.diagnosis.cause))

    def exposition(self, routes: Sequence[ActiveRoute]) -> str:
        refreshes = Counter("sigv4_proxy_credential_refreshes_total", "Background credential refreshes that succeeded.", ("route",))
        failures = Counter("sigv4_proxy_credential_refresh_failures_total", "Background credential refreshes that failed.", ("route",))
        expiry = Gauge("sigv4_proxy_credential_expiry_timestamp_seconds", "When the current credentials expire.", ("route",))
        for active in routes:
            health = active.credentials.health()
            label = (active.route.prefix,)
            refreshes.set(label, health.refreshes)
            failures.set(label, health.refresh_failures)
            if health.expires is not None:
                expiry.set(label, health.expires.timestamp())
        metrics: list[Metric] = [self.requests, self.latency, self.ttfb, self.bytes_in, self.bytes_out,
                                 self.upstream_errors, self.signing_failures, self.refusals, refreshes, failures, expiry]
        return render(metrics)


class Observer:
    """Writes the access log line and feeds the metrics when a request ends."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self.metrics = metrics

    def finished(self, exchange: Exchange, response: web.StreamResponse | None) -> None:
        total = time.monotonic() - exchange.started
        # No response and no status: the client went away first (nginx's 499).
        status = exchange.status or (response.status if response is not None else 499)
        if response is not None and not exchange.streamed and isinstance(response, web.Response):
            exchange.bytes_out = response.content_length or 0
        self.metrics.record(exchange, status, total)
        ttfb = exchange.upstream_ttfb
        shown = f"{ttfb * 1000:.1f}ms" if ttfb is not None else "-"

        def fields() -> dict[str, object]:
            return {
                "method": exchange.method, "path": exchange.path, "status": status, "route": exchange.route,
                "bytes_in": exchange.bytes_in, "bytes_out": exchange.bytes_out,
                "upstream_ttfb_ms": round(ttfb * 1000, 1) if ttfb is not None else None,
                "total_ms": round(total * 1000, 1),
            }

        log_access(
            f"{exchange.method} {exchange.path} {status} in={exchange.bytes_in} out={exchange.bytes_out} "
            f"ttfb={shown} total={total * 1000:.1f}ms",
            fields,
        )


def route_facts(route: Route) -> diagnose.RouteFacts:
    authority = URL(route.upstream_origin).raw_authority.rpartition("@")[2]
    return diagnose.RouteFacts(route.sign_host, authority, route.region, route.service)


async def read_refusal(upstream: UpstreamResponse) -> bytes:
    """The head of a 403's body (error bodies are small), which the caller must send on unchanged
    before the rest of the body: up to REFUSAL_BODY_LIMIT bytes, or what arrived within
    REFUSAL_READ_WAIT seconds, so a 403 that trickles cannot hold its own headers back (a
    cancelled read consumes nothing)."""
    chunks: list[bytes | memoryview] = []
    size = 0
    deadline = time.monotonic() + REFUSAL_READ_WAIT
    while size < REFUSAL_BODY_LIMIT:
        try:
            chunk = await asyncio.wait_for(upstream.read_chunk(), max(deadline - time.monotonic(), 0))
        except TimeoutError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def explain_refusal(
    exchange: Exchange, upstream: UpstreamResponse, head: bytes, signed: SignedRequest, route: Route, debug: bool
) -> None:
    """Diagnose an upstream 403 from its headers and the head of its body; log one line."""
    refusal = diagnose.parse_refusal(upstream.headers, head)
    if refusal is None:
        return  # the application's own 403, not AWS's auth
    found = diagnose.diagnose(refusal, signed.canonical_request, route_facts(route), datetime.now(timezone.utc))
    exchange.diagnosis = found
    log.warning(
        "AWS refused %s %s (403 %s): %s: %s", exchange.method, exchange.path, found.error_type or "-",
        found.cause, found.summary, extra={"fields": {"cause": found.cause, "error_type": found.error_type}},
    )
    if debug:
        theirs = diagnose.quoted_after(refusal.message, "The Canonical String for this request should have been")
        if theirs is not None:
            signing_log.info("AWS's canonical request for %s %s:\n%s", exchange.method, exchange.path,
                             redact.canonical_request(theirs))


def log_signing(exchange: Exchange, route: Route, signed: SignedRequest) -> None:
    """--debug-signing: what was signed, with the token and credential-like query values masked."""
    canonical = redact.canonical_request(signed.canonical_request)
    signing_log.info(
        "signed %s %s for %s (%s/%s)\ncanonical request:\n%s\nstring to sign:\n%s",
        exchange.method, exchange.path, route.sign_host, route.region, route.service, canonical,
        signed.string_to_sign, extra={"fields": {"canonical_request": canonical, "string_to_sign": signed.string_to_sign}},
    )
