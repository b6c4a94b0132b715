"""Credentials per route from botocore's standard chain, never fetched on the event loop.

Every botocore fetch or refresh is blocking network or subprocess I/O (STS, SSO, IMDS, the
container endpoint, credential_process), so it runs in a thread. Requests sign with a cached,
frozen key set; a refresh starts in the background ahead of expiry, one at a time, and only a
request holding already-expired credentials waits for it (DESIGN.md fact 9).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

import botocore.session
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    DeferredRefreshableCredentials,
)
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import BotoCoreError, ClientError

from proxy.config import Route
from proxy.signing import Credentials

log = logging.getLogger("sigv4_proxy.credentials")

_SOURCE_NAMES = {
    "env": "environment variables",
    "shared-credentials-file": "credentials file",
    "config-file": "config file",
    "sso": "sso",
    "assume-role": "assume-role",
    "assume-role-with-web-identity": "web identity",
    "container-role": "container",
    "iam-role": "imds",
    "custom-process": "credential_process",
}
_SESSION_NAME_CHARS = re.compile(r"[^\w+=,.@-]")


class CredentialsUnavailable(RuntimeError):
    """No usable credentials: the message names the source and what to do."""


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
    async def force_refresh(self) -> None: ...
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

    async def force_refresh(self) -> None:
        return None

    def describe(self) -> str:
        return self._label

    def health(self) -> CredentialHealth:
        return CredentialHealth(self._label, None)


def role_session_name(explicit: str | None, sign_host: str) -> str:
    """STS allows 2-64 characters of [\\w+=,.@-]: trim and clean whatever we are given."""
    name = explicit or os.environ.get("AWS_ROLE_SESSION_NAME") or f"sigv4-proxy-{socket.gethostname()}"
    name = _SESSION_NAME_CHARS.sub("-", name)[:64]
    return name if len(name) >= 2 else f"sigv4-proxy-{sign_host}"[:64]


class ChainCredentialSource:
    """botocore's chain for one route (profile, role, or the default chain)."""

    def __init__(self, route: Route, refresh_ahead: float = 300.0, expired_margin: float = 30.0):
        self._route = route
        self._refresh_ahead = refresh_ahead
        self._expired_margin = expired_margin
        self._boto: BotoCredentials | None = None
        self._frozen: Credentials | None = None
        self._expiry: datetime | None = None
        self._method = "unknown"
        self._refreshing: asyncio.Task[None] | None = None
        self.refreshes = 0
        self.refresh_failures = 0

    async def start(self) -> None:
        await asyncio.to_thread(self._resolve)

    def describe(self) -> str:
        source = _SOURCE_NAMES.get(self._method, self._method)
        if self._route.role_arn:
            source = f"assume-role {self._route.role_arn}"
        elif self._route.profile:
            source = f"profile {self._route.profile} ({source})"
        if self._expiry is not None:
            source += f", expires {self._expiry.strftime('%Y-%m-%d %H:%M:%S UTC')}"
        return source

    def health(self) -> CredentialHealth:
        return CredentialHealth(self.describe(), self._expiry, self.refreshes, self.refresh_failures)

    async def get(self) -> Credentials:
        frozen, expiry = self._frozen, self._expiry
        if frozen is None:
            raise CredentialsUnavailable(self._unavailable("no credentials were resolved"))
        if expiry is None:
            return frozen
        remaining = (expiry - datetime.now(timezone.utc)).total_seconds()
        if remaining > self._refresh_ahead:
            return frozen
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh())
        if remaining > self._expired_margin:
            return frozen  # still valid: keep signing while the refresh runs
        await asyncio.shield(self._refreshing)
        if self._frozen is frozen:
            raise CredentialsUnavailable(self._unavailable("credentials expired and refresh failed"))
        return self._frozen

    async def force_refresh(self) -> None:
        """Re-resolve the whole chain, e.g. after `aws sso login` or an upstream 'token expired'."""
        await asyncio.to_thread(self._resolve)

    async def _refresh(self) -> None:
        try:
            await asyncio.to_thread(self._freeze)
            self.refreshes += 1
            log.info("refreshed credentials for route %s: %s", self._route.prefix, self.describe())
        except (BotoCoreError, ClientError, CredentialsUnavailable, OSError) as exc:
            self.refresh_failures += 1
            log.warning("credential refresh for route %s failed: %s", self._route.prefix, exc)

    def _resolve(self) -> None:
        """Blocking: build a botocore session and find credentials (runs in a thread)."""
        try:
            session = botocore.session.Session(profile=self._route.profile)
            base = session.get_credentials()
        except (BotoCoreError, ClientError) as exc:
            raise CredentialsUnavailable(self._unavailable(str(exc))) from None
        if base is None:
            raise CredentialsUnavailable(self._unavailable("no credentials found in the AWS chain"))
        if self._route.role_arn:
            base = self._assume_role(session, base)
        self._boto = base
        self._method = base.method or "unknown"
        self._freeze()

    def _assume_role(self, session: botocore.session.Session, base: BotoCredentials) -> BotoCredentials:
        extra: dict[str, object] = {
            "RoleSessionName": role_session_name(self._route.role_session_name, self._route.sign_host)
        }
        if self._route.external_id:
            extra["ExternalId"] = self._route.external_id
        if self._route.duration_seconds:
            extra["DurationSeconds"] = self._route.duration_seconds
        fetcher = AssumeRoleCredentialFetcher(
            client_creator=session.create_client,
            source_credentials=base,
            role_arn=self._route.role_arn,
            extra_args=extra,
        )
        return DeferredRefreshableCredentials(method="assume-role", refresh_using=fetcher.fetch_credentials)

    def _freeze(self) -> None:
        """Blocking: take one consistent key set (botocore refreshes it first if it is due)."""
        assert self._boto is not None
        try:
            frozen = self._boto.get_frozen_credentials()
        except (BotoCoreError, ClientError) as exc:
            raise CredentialsUnavailable(self._unavailable(str(exc))) from None
        self._frozen = Credentials(frozen.access_key, frozen.secret_key, frozen.token)
        expiry = getattr(self._boto, "_expiry_time", None)
        self._expiry = expiry.astimezone(timezone.utc) if isinstance(expiry, datetime) else None

    def _unavailable(self, why: str) -> str:
        if self._route.profile:
            hint = f"check profile {self._route.profile!r}; for SSO run `aws sso login --profile {self._route.profile}`"
        else:
            hint = "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run `aws sso login`"
        return f"credentials for route {self._route.prefix} unavailable ({why}): {hint}"
