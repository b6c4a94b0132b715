"""`sigv4-proxy check`: is this setup going to work, and if not, why?

Validates the configuration, resolves each route's credentials (source and expiry, never a key),
measures the local clock against the upstream's Date header, then sends one signed probe through
a proxy started on a free loopback port (the very code `run` uses) and prints the 403 diagnosis.
Exit 0 only when AWS's auth accepted the probe (any answer but an auth 403); 1 when it did not or
the probe never got an answer; 2 for an invalid configuration.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy import diagnose, redact
from proxy.config import ConfigError, Route, Settings, resolve_routes
from proxy.credentials import ChainCredentialSource, CredentialsUnavailable
from proxy.logs import ACCESS_LOGGER
from proxy.server import CredentialFactory, StartupError, start_proxy, upstream_client
from proxy.upstream import Origin, UpstreamError

Print = Callable[[str], None]


def _line(out: Print, label: str, text: str) -> None:
    out(f"{label:<12} {text}")


async def measure_clock(route: Route, settings: Settings) -> str:
    """The local clock against the upstream's Date header (an unsigned HEAD: any answer has one)."""
    client = upstream_client(settings)
    try:
        response = await client.request(
            Origin.parse(route.upstream_origin), "HEAD", route.upstream.raw_path_qs or "/", CIMultiDict(),
            None, 0, settings.timeout,
        )
        now = datetime.now(timezone.utc)
        date = response.headers.get("Date")
    except (UpstreamError, TimeoutError) as exc:
        return f"not measured: {route.upstream_origin} did not answer ({type(exc).__name__}: {exc})"
    finally:
        await client.close()
    server_time = diagnose.http_date(date)
    if server_time is None:
        return "not measured: the upstream sent no valid Date header"
    skew = diagnose.skew_against(server_time, now)
    if abs(skew) < 1.5:
        return f"in sync with the upstream (within 1 s; Date: {date})"
    verdict = "too far: AWS will refuse every signature" if abs(skew) > diagnose.MAX_SKEW_SECONDS else "AWS allows 5 min"
    return f"local clock is {diagnose.describe_skew(skew)} (Date: {date}); {verdict}"


def probe_verdict(status: int, headers: Mapping[str, str], body: bytes) -> tuple[bool, str]:
    """(accepted by AWS auth, what to print) for the probe's answer."""
    diagnosis = headers.get(diagnose.DIAGNOSIS_HEADER)
    if diagnosis and diagnosis.startswith("missing-authentication-token"):
        # API Gateway answers this for paths it has no resource for too, signed or not.
        return False, f"AWS refused the probe: {diagnosis} (is --path a real resource, stage included?)"
    if diagnosis:
        return False, f"AWS refused the signature: {diagnosis}"
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and set(data) == {"error", "detail"} and status >= 500:
        return False, f"the probe never reached AWS: {data['error']}: {data['detail']}"
    # Said as what was seen: an upstream that checks no signature (not AWS) answers the same way.
    if status == 403:
        return True, "no signature refusal; the 403 is the application's own answer"
    return True, f"no signature refusal (the upstream answered {status})"


async def run_check(
    settings: Settings, path: str = "/", credentials_for: CredentialFactory = ChainCredentialSource, out: Print = print
) -> int:
    try:
        routes = resolve_routes(settings)
        if not path.startswith("/"):
            raise ConfigError(f"--path must start with '/', got {path!r}")
    except ConfigError as exc:
        _line(out, "config", f"FAILED: {exc}")
        return 2
    _line(out, "config", f"ok ({len(routes)} route{'s' if len(routes) != 1 else ''})")
    # The probe's own line says what its access line would, which in text would land amid this
    # report on the terminal (JSON lines go to a program, debug output to someone asking for it).
    access = logging.getLogger(ACCESS_LOGGER)
    level = access.level
    if settings.log_format == "text" and settings.log_level != "debug":
        access.setLevel(logging.WARNING)
    try:
        return await _check_routes(settings, routes, path, credentials_for, out)
    finally:
        access.setLevel(level)


async def _check_routes(
    settings: Settings, routes: list[Route], path: str, credentials_for: CredentialFactory, out: Print
) -> int:
    try:
        proxy = await start_proxy(settings.model_copy(update={"listen": "127.0.0.1:0"}), routes, credentials_for)
    except CredentialsUnavailable as exc:
        _line(out, "credentials", f"FAILED: {exc}")
        return 1
    except StartupError as exc:
        _line(out, "startup", f"FAILED: {exc}")
        return 1
    try:
        for active in proxy.routes:
            r = active.route
            via = proxy.client.outbound_proxy(active.origin)
            _line(out, f"route {r.prefix}", f"-> {r.upstream.with_user(None)}{f' via outbound proxy {via}' if via else ''} "
                  f"(signing host {r.sign_host}, region {r.region}, service {r.service})")
            health = active.credentials.health()
            _line(out, "credentials", health.source + ("" if health.expires else ", no expiry"))
        probed = next(a.route for a in proxy.routes if _serves(a.route, path))
        _line(out, "clock", await measure_clock(probed, settings))
        accepted, verdict = await probe(f"http://127.0.0.1:{proxy.port}", path, out)
    finally:
        await proxy.close(1.0)
    _line(out, "result", ("OK: " if accepted else "FAILED: ") + verdict)
    return 0 if accepted else 1


def _serves(route: Route, path: str) -> bool:
    target = path.partition("?")[0]
    return route.prefix == "/" or target == route.prefix or target.startswith(route.prefix + "/")


async def probe(base: str, path: str, out: Print) -> tuple[bool, str]:
    started = time.monotonic()
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        try:
            async with session.get(URL(base + path, encoded=True), allow_redirects=False) as response:
                body = await response.content.read(64 * 1024)
                elapsed = (time.monotonic() - started) * 1000
                shown, sep, query = path.partition("?")
                shown += sep + redact.query(query)
                _line(out, "probe", f"GET {shown} -> {response.status} {response.reason} ({elapsed:.0f} ms)")
                return probe_verdict(response.status, response.headers, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return False, f"the probe got no answer: {type(exc).__name__}: {exc}"
