"""The proxy's own endpoints under a reserved prefix (default /__sigv4proxy/): `health` and
`metrics`. An addon: it answers before routing, so nothing under the prefix is ever signed or
forwarded, and a load balancer probing `/` still reaches the upstream (../shared/cases O1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from proxy import canonical
from proxy.credentials import CredentialsUnavailable
from proxy.forward import ActiveRoute
from proxy.observe import ProxyMetrics

HEALTH_TIMEOUT = 5.0  # a credential refresh that hangs must not hang the health check with it
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class StatusEndpoints:
    def __init__(self, prefix: str, routes: Sequence[ActiveRoute], metrics: ProxyMetrics) -> None:
        self._prefix = "/" + prefix.strip("/") + "/"
        self._routes = routes
        self._metrics = metrics

    async def on_request(self, request: web.BaseRequest) -> web.StreamResponse | None:
        raw = request.raw_path.partition("?")[0]
        # Match on the wire form, so /%5F%5Fsigv4proxy/health or /x/../__sigv4proxy/ cannot slip past.
        path = canonical.wire_path(raw) if raw.startswith("/") else raw
        if path != self._prefix.rstrip("/") and not path.startswith(self._prefix):
            return None
        name = path[len(self._prefix) :]
        if name not in ("health", "metrics"):
            return _json(404, {"error": "no such endpoint", "detail": f"try {self._prefix}health or {self._prefix}metrics"})
        if request.method not in ("GET", "HEAD"):
            return _json(405, {"error": "method not allowed", "detail": f"{path} answers GET and HEAD"}, Allow="GET, HEAD")
        if name == "metrics":
            body = self._metrics.exposition(self._routes).encode()
            return web.Response(body=body, headers={"Content-Type": PROMETHEUS_TEXT, "Cache-Control": "no-store"})
        return await self.health()

    async def health(self) -> web.Response:
        """200 when every route can sign; 503 naming the route and the reason when one cannot."""
        routes = await asyncio.gather(*(route_health(active) for active in self._routes))
        usable = all(r["credentials"]["usable"] for r in routes)
        return _json(200 if usable else 503, {"status": "ok" if usable else "unavailable", "routes": routes})


async def route_health(active: ActiveRoute) -> dict[str, Any]:
    error = None
    try:
        # get() refreshes expired credentials first, so an idle proxy is not reported dead.
        async with asyncio.timeout(HEALTH_TIMEOUT):
            await active.credentials.get()
    except CredentialsUnavailable as exc:
        error = str(exc)
    except TimeoutError:
        error = f"credential refresh still running after {HEALTH_TIMEOUT:g}s"
    health = active.credentials.health()
    route = active.route
    credentials: dict[str, Any] = {
        "usable": error is None,
        "source": health.source,
        "expires": health.expires.strftime("%Y-%m-%dT%H:%M:%SZ") if health.expires else None,
        "refreshes": health.refreshes,
        "refresh_failures": health.refresh_failures,
    }
    if error:
        credentials["error"] = error
    return {
        "prefix": route.prefix,
        "upstream": str(route.upstream.with_user(None)),
        "sign_host": route.sign_host,
        "region": route.region,
        "service": route.service,
        "credentials": credentials,
    }


def _json(status: int, data: dict[str, Any], **headers: str) -> web.Response:
    body = json.dumps(data, indent=1).encode() + b"\n"
    return web.Response(
        status=status, body=body, headers={"Content-Type": "application/json", "Cache-Control": "no-store", **headers}
    )
