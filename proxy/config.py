"""Settings: command line > environment (SIGV4_PROXY_*) > TOML file > defaults.

The command-line options describe one route for "/"; a TOML file may add `[[routes]]` tables.
Region and service are inferred from the signing host where AWS's naming makes that certain.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from yarl import URL

from proxy import canonical
from proxy.cors import normalize_origin
from proxy.headers import HTTP_TOKEN

MiB = 1024 * 1024

# Host names whose region and service AWS's own naming makes certain.
_HOST_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^[^.]+\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$"), "execute-api"),
    (re.compile(r"^[^.]+\.lambda-url\.([a-z0-9-]+)\.on\.aws$"), "lambda"),
    (re.compile(r"^.+\.([a-z0-9-]+)\.es\.amazonaws\.com(\.cn)?$"), "es"),
    (re.compile(r"^.+\.([a-z0-9-]+)\.aoss\.amazonaws\.com$"), "aoss"),
]


def _header_names(names: list[str]) -> list[str]:
    for name in names:
        if not HTTP_TOKEN.fullmatch(name):
            raise ValueError(f"{name!r} is not an HTTP header name")
    return names


HeaderNames = Annotated[list[str], AfterValidator(_header_names)]


class ConfigError(ValueError):
    """Invalid configuration: the message is one line a user can act on."""


class SigningTarget(BaseModel):
    """How one route signs: the keys a `[[routes]]` table shares with the top-level route for "/"."""

    sign_host: str | None = None
    region: str | None = None
    service: str | None = None
    profile: str | None = None
    role_arn: str | None = None
    role_session_name: str | None = None
    external_id: str | None = None
    origin_path: str | None = Field(None, description="CloudFront origin path: signed, not sent")


class RouteSettings(SigningTarget):
    """One `[[routes]]` table: requests under `prefix` go to `upstream`, signed for `sign_host`."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = "/"
    upstream: str
    duration_seconds: int | None = Field(None, ge=900, le=43200)  # STS AssumeRole's own bounds
    strip_prefix: bool = False
    signed_headers: HeaderNames = Field(default_factory=list)


class Settings(BaseSettings, SigningTarget):
    """Every option of `run`, `demo` and `check`; see config.example.toml for each key."""

    model_config = SettingsConfigDict(env_prefix="SIGV4_PROXY_", extra="forbid")

    listen: str = "127.0.0.1:8080"
    upstream: str | None = None
    signed_headers: Annotated[HeaderNames, NoDecode] = Field(default_factory=list)
    routes: list[RouteSettings] = Field(default_factory=list)

    timeout: float = Field(60.0, gt=0, description="seconds to wait for the upstream's headers")
    connect_timeout: float = Field(10.0, gt=0)
    idle_timeout: float = Field(300.0, ge=0, description="0: a streamed body may idle forever")
    max_body_size: int = Field(10 * MiB, gt=0)
    query_plus: Literal["space", "plus"] = "space"

    ca_bundle: Path | None = None
    insecure: bool = False

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Browsers and safety (proxy/guard.py, proxy/cors.py): who may make the proxy sign.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_expose_headers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_allow_credentials: bool = False
    cors_max_age: int = Field(600, ge=0, description="seconds a browser may cache a preflight answer")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allow_remote: bool = False
    client_token: SecretStr | None = None

    @field_validator("signed_headers", "cors_origins", "cors_expose_headers", "allowed_hosts", mode="before")
    @classmethod
    def _list_from_text(cls, value: Any) -> Any:
        """Env values: a JSON list like the other list settings, or friendlier, comma-separated."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _cors_origins_are_origins(cls, value: list[str]) -> list[str]:
        return [normalize_origin(origin) for origin in value]

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts_are_names(cls, value: list[str]) -> list[str]:
        return [host.strip().lower().strip("[]") for host in value if host.strip()]

    @field_validator("client_token")
    @classmethod
    def _client_token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value().strip() else None

    # Observability (403 diagnosis, logs, health and metrics): see proxy/observe.py, proxy/status.py.
    log_format: Literal["text", "json"] = "text"
    debug_signing: bool = Field(False, description="log canonical request and string to sign (no secrets)")
    reserved_prefix: str = Field("/__sigv4proxy/", description="health and metrics live here; never forwarded")

    @field_validator("reserved_prefix")
    @classmethod
    def _reserved_prefix_is_a_path(cls, value: str) -> str:
        if not value.strip("/") or "?" in value or "#" in value:
            raise ValueError(f"reserved_prefix must be a path below / such as /__sigv4proxy/, got {value!r}")
        return "/" + value.strip("/") + "/"

    # Graceful shutdown (sidecar containers): how long SIGTERM/SIGINT waits for in-flight requests.
    shutdown_grace: float = Field(10.0, ge=0, description="seconds in-flight requests may finish after a stop signal")

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, value: str) -> str:
        parse_listen(value)
        return value


def parse_listen(value: str) -> tuple[str, int]:
    """"HOST:PORT" or "[v6]:PORT" into (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen must be HOST:PORT, got {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _source_of(key: str, cli: dict[str, Any], config_file: Path | None) -> str:
    """Where a setting's value came from, in precedence order, for an error message."""
    if key in cli:
        return f" (--{key.replace('_', '-')})"
    env = f"SIGV4_PROXY_{key.upper()}"
    if env in os.environ:
        return f" (from {env})"
    return f" (in {config_file})" if config_file is not None else ""


def load_settings(cli: dict[str, Any], config_file: Path | None) -> Settings:
    """Merge the sources; raise ConfigError with one readable line on any invalid value."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist or is not a file")

    class _Settings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            if config_file is None:
                return init_settings, env_settings
            return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, config_file)

    try:
        return _Settings(**cli)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "config"
        source = _source_of(str(first["loc"][0]) if first["loc"] else "", cli, config_file)
        raise ConfigError(f"invalid setting {where}{source}: {first['msg']}") from None
    except (OSError, ValueError) as exc:  # unreadable or malformed TOML, or an undecodable env value
        source = f"config file {config_file}" if config_file is not None else "the SIGV4_PROXY_* environment"
        raise ConfigError(f"cannot read {source}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Route:
    """A resolved route: everything the request path needs, computed once at start-up."""

    prefix: str
    upstream: URL
    upstream_origin: str  # scheme://host[:port], the part of the URL that decides where bytes go
    upstream_path: str  # the upstream URL's own path, prepended to what is forwarded
    sign_host: str
    region: str
    service: str
    strip_prefix: bool
    origin_path: str  # CloudFront adds it on the way to the origin: signed, never sent
    signed_headers: tuple[str, ...]
    profile: str | None = None
    role_arn: str | None = None
    role_session_name: str | None = None
    external_id: str | None = None
    duration_seconds: int | None = None

    @property
    def is_s3(self) -> bool:
        return self.service == "s3"


def infer_region_service(sign_host: str) -> tuple[str | None, str | None]:
    for pattern, service in _HOST_PATTERNS:
        match = pattern.match(sign_host.lower())
        if match:
            return match.group(1), service
    return None, None


def _resolve_route(spec: RouteSettings, shared_headers: list[str]) -> Route:
    upstream = URL(spec.upstream)
    if upstream.scheme not in ("http", "https") or not upstream.host:
        raise ConfigError(f"upstream must be an http(s) URL with a host, got {spec.upstream!r}")
    if upstream.query_string or upstream.fragment:
        raise ConfigError(f"upstream {spec.upstream!r} must not have a query or fragment")
    sign_host = spec.sign_host or upstream.host
    inferred_region, inferred_service = infer_region_service(sign_host.split(":")[0])
    region = spec.region or inferred_region
    service = spec.service or inferred_service
    if not region or not service:
        missing = " and ".join(n for n, v in (("--region", region), ("--service", service)) if not v)
        raise ConfigError(
            f"cannot infer region/service from signing host {sign_host!r} (a custom domain?): "
            f"set {missing} (e.g. --region us-east-1 --service execute-api)"
        )
    if not spec.role_arn and (spec.external_id or spec.role_session_name or spec.duration_seconds):
        raise ConfigError("external_id, role_session_name and duration_seconds need a role_arn (--role-arn) to assume")
    prefix = "/" + spec.prefix.strip("/") if spec.prefix.strip("/") else "/"
    origin = f"{upstream.scheme}://{upstream.raw_authority}"
    return Route(
        prefix=prefix,
        upstream=upstream,
        upstream_origin=origin,
        upstream_path=upstream.raw_path.rstrip("/"),
        sign_host=sign_host,
        region=region,
        service=service,
        strip_prefix=spec.strip_prefix,
        origin_path=_origin_path(spec.origin_path),
        signed_headers=tuple(h.lower() for h in [*shared_headers, *spec.signed_headers]),
        profile=spec.profile,
        role_arn=spec.role_arn,
        role_session_name=spec.role_session_name,
        external_id=spec.external_id,
        duration_seconds=spec.duration_seconds,
    )


def _origin_path(value: str | None) -> str:
    """"/prod/" or "prod" -> "/prod"; checked, since it is signed but never sent."""
    path = "/" + value.strip("/") if value and value.strip("/") else ""
    if path and canonical.wire_path(path) != path:
        raise ConfigError(f"origin_path {value!r} must be a plain path such as /prod")
    return path


def resolve_routes(settings: Settings) -> list[Route]:
    """Routes sorted longest prefix first; the top-level options form the route for "/"."""
    specs = list(settings.routes)
    if settings.upstream:
        shared = settings.model_dump(include=set(SigningTarget.model_fields))
        specs.append(RouteSettings(prefix="/", upstream=settings.upstream, **shared))
    if not specs:
        raise ConfigError("no upstream: pass --upstream URL (or add [[routes]] to the config file)")
    routes = [_resolve_route(spec, settings.signed_headers) for spec in specs]
    prefixes = [r.prefix for r in routes]
    duplicates = {p for p in prefixes if prefixes.count(p) > 1}
    if duplicates:
        raise ConfigError(f"two routes share the prefix {sorted(duplicates)[0]!r}")
    return sorted(routes, key=lambda r: len(r.prefix), reverse=True)
