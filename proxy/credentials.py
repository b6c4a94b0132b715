"""Credentials per route, kept fresh in the background so a request never waits on the network.

Requests sign with the cached, frozen key set (DESIGN.md fact 9). A background task per route
renews temporary credentials ahead of their expiry, and resolves the whole chain again when the
AWS config or credentials file changes, when a renewal fails (so `aws sso login` or an edited file
is picked up) and when the upstream says the token is expired or invalid. The blocking botocore
work runs in a thread (credential_chain.py), one refresh at a time per route. Only a request that
holds credentials already expired, whose refresh fails, gets an error: 503 naming the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol

from proxy.config import Route
from proxy.credential_chain import CredentialsUnavailable, Resolved, renew, resolve, watched_files
from proxy.signing import Credentials

__all__ = ["ChainCredentialSource", "CredentialSource", "CredentialsUnavailable", "StaticCredentialSource"]

log = logging.getLogger("sigv4_proxy.credentials")


@dataclass(frozen=True, slots=True)
class CredentialHealth:
    """What health and metrics report about a route's credentials (never a key or token)."""

    source: str  # describe(): where they come from, and their expiry if they have one
    expires: datetime | None
    refreshes: int = 0
    refresh_failures: int = 0


class CredentialSource(Protocol):
    async def start(self) -> None: ...
    async def get(self) -> Credentials: ...
    async def force_refresh(self, stale: Credentials | None = None) -> bool: ...
    async def close(self) -> None: ...
    def describe(self) -> str: ...
    def health(self) -> CredentialHealth: ...


class StaticCredentialSource:
    """Fixed credentials (the demo's, and tests that do not exercise the chain)."""

    def __init__(self, credentials: Credentials, label: str = "static") -> None:
        self._credentials = credentials
        self._label = label

    async def start(self) -> None:
        return None

    async def get(self) -> Credentials:
        return self._credentials

    async def force_refresh(self, stale: Credentials | None = None) -> bool:
        return False  # nothing new can come from a fixed set

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return self._label

    def health(self) -> CredentialHealth:
        return CredentialHealth(self._label, None)


class ChainCredentialSource:
    """botocore's chain for one route (profile, role, or the default chain), refreshed ahead of time.

    `refresh_ahead`: renew this long before expiry (at most half the credentials' lifetime, so
    short-lived ones are not renewed back to back). `expired_margin`: closer than this to expiry
    (at most a tenth of the lifetime) a request waits for fresh credentials instead of signing with
    ones that may expire on the way. `recheck_interval`: how often the AWS files are checked for
    edits, and how long to wait before trying a failed refresh again.
    """

    def __init__(
        self,
        route: Route,
        refresh_ahead: float = 300.0,
        expired_margin: float = 30.0,
        recheck_interval: float = 10.0,
    ) -> None:
        self._route = route
        self._refresh_ahead = refresh_ahead
        self._expired_margin = expired_margin
        self._recheck_interval = recheck_interval
        self._current: Resolved | None = None
        self._files: tuple[tuple[str, int, int], ...] = ()
        self._inflight: asyncio.Task[None] | None = None
        self._inflight_forced = False
        self._failure: str | None = None  # why the last refresh failed, until one succeeds
        self._starting: asyncio.Future[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._closed = False
        self.refreshes = 0
        self.refresh_failures = 0

    async def start(self) -> None:
        """Resolve once (raises CredentialsUnavailable: start-up fails fast), then keep fresh."""
        if self._starting is None:  # one source may serve several routes, started side by side
            self._starting = asyncio.ensure_future(self._start())
        await self._starting

    async def _start(self) -> None:
        self._files = await asyncio.to_thread(watched_files)
        self._current = await asyncio.to_thread(resolve, self._route)
        self._keeper = asyncio.create_task(self._keep_fresh(), name=f"credentials {self._route.prefix}")

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        self._closed = True
        if self._inflight is not None:  # a thread cannot be cancelled: give it a moment to finish
            await asyncio.wait([self._inflight], timeout=5.0)

    def describe(self) -> str:
        if self._current is None:
            return "not resolved"
        return self._current.source + _expiry_text(self._current)

    def health(self) -> CredentialHealth:
        expiry = self._current.expiry if self._current is not None else None
        return CredentialHealth(self.describe(), expiry, self.refreshes, self.refresh_failures)

    async def get(self) -> Credentials:
        current = self._current
        if current is None:
            raise CredentialsUnavailable(f"credentials for route {self._route.prefix} were never resolved")
        if current.expiry is None:  # long-term keys: nothing to check, and this runs per request
            return current.credentials
        now = datetime.now(timezone.utc)
        if now < self._wait_from(current):
            if now >= self._refresh_from(current):
                self._refresh_in_background(force=False, why="they expire soon")  # in case the keeper lags
            return current.credentials
        if self._failure is not None and now < current.expiry:
            return current.credentials  # refreshing fails already: the keeper retries, no request waits
        await self._refresh(force=False, why="they expire now")
        latest = self._current
        assert latest is not None
        if latest.expiry is None or datetime.now(timezone.utc) < latest.expiry:
            return latest.credentials  # fresh ones, or the old ones that are still (barely) valid
        raise CredentialsUnavailable(
            f"credentials for route {self._route.prefix} from {latest.source} expired at "
            f"{latest.expiry:%H:%M:%S} UTC and refreshing them failed: {self._failure or 'no new credentials'}"
        )

    async def force_refresh(self, stale: Credentials | None = None) -> bool:
        """Resolve the chain again (an upstream said the token is expired or invalid).

        Returns whether credentials other than `stale` are now current. Concurrent callers share
        one refresh, and a caller whose set was already replaced refreshes nothing.
        """
        if stale is not None and self._current is not None and self._current.credentials != stale:
            return True
        await self._refresh(force=True, why="the upstream rejected them")
        return self._current is not None and self._current.credentials != stale

    # -- the refresh itself: one at a time, in a thread, never cancelled by a departing request --

    async def _refresh(self, force: bool, why: str) -> None:
        running = self._inflight
        if running is not None and not running.done():
            joined_forced = self._inflight_forced
            await asyncio.shield(running)
            if joined_forced or not force:
                return
        self._refresh_in_background(force, why)
        assert self._inflight is not None
        await asyncio.shield(self._inflight)

    def _refresh_in_background(self, force: bool, why: str) -> None:
        if self._inflight is None or self._inflight.done():
            self._inflight_forced = force
            self._inflight = asyncio.create_task(self._run_refresh(force, why))

    async def _run_refresh(self, force: bool, why: str) -> None:
        previous = self._current
        assert previous is not None
        try:
            if force or previous.expiry is None:
                fresh = await asyncio.to_thread(resolve, self._route)
            else:
                try:
                    fresh = await asyncio.to_thread(renew, previous, self._route)
                except CredentialsUnavailable as exc:
                    if self._closed:
                        raise
                    # The source itself may have changed: `aws sso login`, an edited profile.
                    log.info("renewing credentials for route %s failed (%s); resolving the chain again",
                             self._route.prefix, exc)
                    fresh = await asyncio.to_thread(resolve, self._route)
        except CredentialsUnavailable as exc:
            self._failure = str(exc)
            self.refresh_failures += 1
            log.warning("refreshing credentials for route %s (%s) failed: %s", self._route.prefix, why, exc)
            return
        self._failure = None
        self._current = fresh  # one assignment: readers see the old set or the new, never a mix
        self.refreshes += 1
        if fresh.credentials != previous.credentials:
            log.info("credentials for route %s refreshed (%s): %s", self._route.prefix, why, self.describe())

    async def _keep_fresh(self) -> None:
        """Background: renew ahead of expiry; resolve again when the AWS files change."""
        while True:
            await asyncio.sleep(self._next_check())
            try:
                files = await asyncio.to_thread(watched_files)
                current = self._current
                assert current is not None
                if files != self._files:
                    self._files = files
                    await self._refresh(force=True, why="the AWS config or credentials file changed")
                elif current.expiry is not None and datetime.now(timezone.utc) >= self._refresh_from(current):
                    await self._refresh(force=False, why="they expire soon")
            except Exception:  # the keeper must outlive any one bad refresh; the failure is logged
                log.exception("credential keeper for route %s", self._route.prefix)

    def _next_check(self) -> float:
        current = self._current
        assert current is not None
        wait = self._recheck_interval
        if current.expiry is not None and self._failure is None:
            until = (self._refresh_from(current) - datetime.now(timezone.utc)).total_seconds()
            # A renewal that brought the same set back (not yet rotated) must not spin: wait a bit.
            wait = min(wait, until) if until > 0 else min(wait, 1.0)
        return max(wait, 0.05)

    def _refresh_from(self, resolved: Resolved) -> datetime:
        assert resolved.expiry is not None
        lifetime = (resolved.expiry - resolved.obtained).total_seconds()
        return resolved.expiry - timedelta(seconds=max(0.0, min(self._refresh_ahead, lifetime / 2)))

    def _wait_from(self, resolved: Resolved) -> datetime:
        assert resolved.expiry is not None
        lifetime = (resolved.expiry - resolved.obtained).total_seconds()
        return resolved.expiry - timedelta(seconds=max(0.0, min(self._expired_margin, lifetime / 10)))


def _expiry_text(resolved: Resolved) -> str:
    if resolved.expiry is None:
        return ""
    left = (resolved.expiry - datetime.now(timezone.utc)).total_seconds()
    return f", expires {resolved.expiry:%Y-%m-%d %H:%M:%S} UTC (in {_duration(left)})"


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "0s: expired"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
