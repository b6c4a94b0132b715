"""The blocking half of credentials: botocore's chain for one route, resolved as the AWS CLI does.

Everything here may do network or subprocess I/O (STS, SSO, IMDS, the container endpoint,
credential_process), so credentials.py only ever calls it through `asyncio.to_thread`.
A resolution yields one `Resolved`: a single frozen key set with its expiry, what it came from
(for the start-up line and errors: never a secret) and what to tell the user when it fails.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import botocore.session
from botocore.config import Config
from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound
from botocore.httpsession import URLLib3Session
from botocore.utils import ContainerMetadataFetcher

from proxy.config import Route
from proxy.signing import Credentials

# botocore's provider METHOD names, as a user would say them.
SOURCE_NAMES = {
    "env": "environment variables",
    "shared-credentials-file": "credentials file",
    "config-file": "config file",
    "sso": "sso",
    "assume-role": "assume-role",
    "assume-role-with-web-identity": "web identity",
    "container-role": "container endpoint",
    "iam-role": "imds",
    "custom-process": "credential_process",
}
# STS RoleSessionName: 2-64 characters of [\w+=,.@-] (AssumeRole API reference).
_SESSION_NAME_DISALLOWED = re.compile(r"[^\w+=,.@-]", re.ASCII)
# Everything botocore, its HTTP layer or a credential helper may raise while finding credentials;
# RuntimeError is botocore's "refreshed, but the refreshed credentials are still expired",
# ValueError/KeyError a container endpoint that is not allowed or answers without a field.
CHAIN_ERRORS = (BotoCoreError, ClientError, OSError, RuntimeError, ValueError, KeyError)
_STS_CONFIG = Config(connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 3})
HOP_LIMIT_HINT = (
    "inside a container on EC2, IMDSv2 answers only if the instance's metadata hop limit is 2 or more "
    "(aws ec2 modify-instance-metadata-options --instance-id ID --http-put-response-hop-limit 2)"
)


class CredentialsUnavailable(RuntimeError):
    """No usable credentials: the message names the source and what to do."""


@dataclass(frozen=True, slots=True)
class Resolved:
    """One consistent key set from one source (DESIGN.md fact 9: never mix two)."""

    credentials: Credentials
    expiry: datetime | None  # None: long-term keys
    obtained: datetime
    source: str  # e.g. "profile dev (sso)"; never a secret
    hint: str  # what the user can do when this source fails
    boto: BotoCredentials  # botocore's live object, renewed in place for temporary credentials


def role_session_name(explicit: str | None, hostname: str | None = None) -> str:
    """Route setting > AWS_ROLE_SESSION_NAME > `sigv4-proxy-<machine>`, cut to what STS accepts.

    The machine's name makes the session recognisable in CloudTrail; long host names (C2 in
    shared/cases) and characters STS refuses would otherwise fail every AssumeRole call.
    """
    name = explicit or os.environ.get("AWS_ROLE_SESSION_NAME") or f"sigv4-proxy-{hostname or socket.gethostname()}"
    name = _SESSION_NAME_DISALLOWED.sub("-", name)[:64]
    return name if len(name) >= 2 else f"sigv4-proxy-{name}"


def in_container() -> bool:
    """Kubernetes, ECS, Docker and Podman each leave one of these marks."""
    marks = ("KUBERNETES_SERVICE_HOST", "ECS_CONTAINER_METADATA_URI_V4", "ECS_CONTAINER_METADATA_URI")
    return any(m in os.environ for m in marks) or Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


def watched_files() -> tuple[tuple[str, int, int], ...]:
    """The AWS config and credentials files' identity: an edit changes it, and we resolve again.
    (Where botocore looks: AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/.)"""
    seen = []
    for variable, default in (("AWS_CONFIG_FILE", "~/.aws/config"), ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")):
        path = os.path.expanduser(os.environ.get(variable) or default)
        try:
            stat = os.stat(path)
            seen.append((path, stat.st_mtime_ns, stat.st_size))
        except OSError:
            seen.append((path, 0, -1))
    return tuple(seen)


def resolve(route: Route) -> Resolved:
    """Blocking: a fresh botocore session finds credentials (re-reading every file and cache)."""
    session = botocore.session.Session(profile=route.profile)
    _check_profile(route, session)
    if not session.get_config_variable("region"):
        # STS for a profile's role (or ours) needs a region; the route's is the one a user expects.
        session.set_config_variable("region", route.region)
    try:
        _quick_container_endpoint(session)
        base = session.get_credentials()
    except CHAIN_ERRORS as exc:
        # A provider that was configured but failed (container endpoint, credential_process) names itself.
        failed = getattr(exc, "kwargs", {}).get("provider")
        source, hint = _describe(route, session, failed) if failed else (_profile_label(session), _default_hint(route))
        raise CredentialsUnavailable(_unavailable(route, source, str(exc), hint)) from None
    if base is None:
        raise CredentialsUnavailable(_nothing_found(route, session))
    source, hint = _describe(route, session, base.method or "unknown")
    if route.role_arn:
        name = role_session_name(route.role_session_name)
        base = _assume_role(route, session, base, name)
        hint = (
            f"check that the base credentials ({source}) may call sts:AssumeRole on {route.role_arn} "
            "(the role's trust policy, external id, duration)"
        )
        source = f"assume-role {route.role_arn} (session {name}) from {source}"
    return _freeze(route, base, source, hint)


def renew(previous: Resolved, route: Route) -> Resolved:
    """Blocking: botocore refreshes its temporary credentials if they are due, then we freeze them."""
    return _freeze(route, previous.boto, previous.source, previous.hint)


def _freeze(route: Route, boto: BotoCredentials, source: str, hint: str) -> Resolved:
    try:
        frozen = boto.get_frozen_credentials()
    except CHAIN_ERRORS as exc:
        raise CredentialsUnavailable(_unavailable(route, source, str(exc), hint)) from None
    # botocore keeps the expiry on RefreshableCredentials only; long-term keys have none. Read right
    # after get_frozen_credentials and only from our one refreshing thread, so it matches the set.
    expiry = getattr(boto, "_expiry_time", None)
    return Resolved(
        credentials=Credentials(frozen.access_key, frozen.secret_key, frozen.token),
        expiry=expiry.astimezone(timezone.utc) if isinstance(expiry, datetime) else None,
        obtained=datetime.now(timezone.utc),
        source=source,
        hint=hint,
        boto=boto,
    )


def _assume_role(
    route: Route, session: botocore.session.Session, base: BotoCredentials, name: str
) -> BotoCredentials:
    extra: dict[str, object] = {"RoleSessionName": name}
    if route.external_id:
        extra["ExternalId"] = route.external_id
    if route.duration_seconds:
        extra["DurationSeconds"] = route.duration_seconds
    fetcher = AssumeRoleCredentialFetcher(
        # botocore's 60 s timeouts would hold a refresh (and a shutdown) for minutes on a lost network.
        client_creator=functools.partial(session.create_client, config=_STS_CONFIG),
        source_credentials=base,
        role_arn=route.role_arn,
        extra_args=extra,
    )
    return DeferredRefreshableCredentials(method="assume-role", refresh_using=fetcher.fetch_credentials)


def _quick_container_endpoint(session: botocore.session.Session) -> None:
    """Give the container endpoint IMDS's short limits (metadata_service_timeout/num_attempts).

    botocore's own are 2 s x 3 attempts with 1 s sleeps: up to 8 s per try of a hung endpoint.
    """
    timeout = float(session.get_config_variable("metadata_service_timeout"))
    attempts = int(session.get_config_variable("metadata_service_num_attempts"))
    fetcher = ContainerMetadataFetcher(session=URLLib3Session(timeout=timeout))
    fetcher.TIMEOUT_SECONDS, fetcher.RETRY_ATTEMPTS, fetcher.SLEEP_TIME = timeout, attempts, 0.1  # type: ignore[misc]
    provider = session.get_component("credential_provider").get_provider("container-role")
    provider._fetcher = fetcher  # botocore has no public setter; the same provider serves credential_source


def _check_profile(route: Route, session: botocore.session.Session) -> None:
    """A profile named by --profile or AWS_PROFILE that no file defines: botocore raises
    ProfileNotFound from every question to the session, so say it once, with the choices."""
    try:
        session.get_scoped_config()
    except ProfileNotFound:
        config_file = os.path.expanduser(session.get_config_variable("config_file"))
        credentials_file = os.path.expanduser(session.get_config_variable("credentials_file"))
        known = ", ".join(sorted(session.available_profiles)) or "none"
        origin = "--profile" if route.profile else "AWS_PROFILE"
        raise CredentialsUnavailable(
            f"credentials for route {route.prefix}: profile {session.profile} ({origin}) not found in "
            f"{config_file} or {credentials_file}; profiles there: {known}"
        ) from None


def _profile_label(session: botocore.session.Session) -> str:
    return f"profile {session.get_config_variable('profile') or 'default'}"


def _describe(route: Route, session: botocore.session.Session, method: str) -> tuple[str, str]:
    """What the credentials came from, and what to do when that source fails."""
    profile = session.get_config_variable("profile")
    name = SOURCE_NAMES.get(method, method)
    if method == "assume-role":
        name = f"assume-role {session.get_scoped_config().get('role_arn', '')}".rstrip()
    source = f"profile {profile} ({name})" if profile and method != "env" else name
    p = f" --profile {profile}" if profile else ""
    hints = {
        "sso": f"run `aws sso login{p}`",
        "env": "export fresh AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN and restart",
        "shared-credentials-file": "put valid keys in the credentials file (it is re-read without a restart)",
        "config-file": "put valid keys in the config file (it is re-read without a restart)",
        "custom-process": "run the profile's credential_process command by hand to see why it fails",
        "assume-role": f"check the role's trust policy and the source profile's credentials (`aws sts get-caller-identity{p}`)",
        "assume-role-with-web-identity": "check AWS_WEB_IDENTITY_TOKEN_FILE and the role's trust policy",
        "container-role": "check the container credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI / "
        "RELATIVE_URI) and its authorization token",
        "iam-role": "check the instance profile's role" + (f"; {HOP_LIMIT_HINT}" if in_container() else ""),
    }
    return source, hints.get(method, _default_hint(route))


def _default_hint(route: Route) -> str:
    if route.profile:
        return f"check profile {route.profile!r}; for SSO run `aws sso login --profile {route.profile}`"
    return "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run `aws configure` / `aws sso login`"


def _unavailable(route: Route, source: str, why: str, hint: str) -> str:
    return f"credentials for route {route.prefix} from {source} unavailable ({why.strip()}): {hint}"


def _nothing_found(route: Route, session: botocore.session.Session) -> str:
    """Name every place the chain looked, so the user sees which one they meant to fill."""
    config_file = os.path.expanduser(session.get_config_variable("config_file"))
    credentials_file = os.path.expanduser(session.get_config_variable("credentials_file"))
    tried = []
    if not route.profile:
        tried.append("environment variables (AWS_ACCESS_KEY_ID)")
    tried.append(f"{_profile_label(session)} in {config_file} and {credentials_file} (keys, sso, credential_process, role)")
    tried.append("container endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI / RELATIVE_URI not set)")
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        tried.append("imds (disabled by AWS_EC2_METADATA_DISABLED)")
    else:
        endpoint = session.get_config_variable("ec2_metadata_service_endpoint") or "http://169.254.169.254/"
        timeout = session.get_config_variable("metadata_service_timeout")
        attempts = session.get_config_variable("metadata_service_num_attempts")
        tried.append(f"imds at {endpoint} (no credentials within {timeout}s x {attempts} attempt(s))")
    message = f"no credentials for route {route.prefix}; tried {', '.join(tried)}: {_default_hint(route)}"
    return message + (f"; {HOP_LIMIT_HINT}" if in_container() else "")
