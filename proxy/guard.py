"""Who may make the proxy sign: a local signer is a credential oracle (DESIGN.md, "Safety").

Any web page the user visits can make the browser send requests to 127.0.0.1: form posts, no-cors
fetches, images, and DNS rebinding (a name the attacker controls re-pointed at 127.0.0.1, so the
page counts as same-origin). Each check below closes one of those doors, before anything is signed:

- CONNECT and absolute-form targets never choose an upstream (no open forward proxy).
- `Host` must name the proxy: a rebound name arrives with the attacker's host name in it.
- A browser's `Origin` must be the proxy's own or listed in `cors_origins`; without an Origin,
  `Sec-Fetch-Site: cross-site` marks a request another site's page made (Fetch Metadata).
- With `client_token` set, every request must carry it (shared dev hosts, containers).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re

from aiohttp import HttpVersion10, HttpVersion11, web

from proxy.config import ConfigError, Settings, is_loopback, parse_listen
from proxy.cors import Cors
from proxy.errors import ProxyError
from proxy.forward import Addon, split_target
from proxy.http_server import SUPPORTED_VERSIONS

log = logging.getLogger("sigv4_proxy")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# RFC 9110 section 15.5.6: a 405 must list what the resource does allow.
ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
SERVED_VERSIONS = frozenset({HttpVersion10, HttpVersion11})
# Distinct accepted Host values remembered (RequestGuard.check_host).
ACCEPTED_HOSTS_KEPT = 64
# RFC 9112 3.2 / RFC 3986 3.2.2-3.2.3: Host is host[:port], the host an IP literal or a reg-name, the
# port digits. Anything else ("127.0.0.1:80@evil.example") is refused, not read as its first name.
HOST_VALUE = re.compile(r"\s*(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?\s*")


def split_authority(authority: str) -> tuple[str, int | None]:
    """`host[:port]` or `[v6][:port]` into a lower-case host without brackets and the port, if any."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = authority.rpartition(":")
        if not sep:
            host, port = authority, ""
    return host, int(port) if port.isdigit() else None


class RequestGuard:
    """Addon: refuse, before routing and signing, what a browser or a forward-proxy client abuses."""

    def __init__(self, settings: Settings, cors: Cors) -> None:
        listen_host, _ = parse_listen(settings.listen)
        self.hosts = LOOPBACK_NAMES | {listen_host.lower(), *settings.allowed_hosts}
        self._cors = cors
        # Host values already accepted: a client sends the same one on every request, and checking
        # its form and name again cost more than the rest of the guard (~1 us of a small GET).
        self._accepted_hosts: set[str] = set()

    async def on_request(self, request: web.BaseRequest) -> web.StreamResponse | None:
        if request.version not in SERVED_VERSIONS:
            # HTTP/0.9 (a request line without a version) has no headers to check a Host or an
            # Origin in; "HTTP/2.0" on an HTTP/1 connection is no HTTP/2 (RFC 9112 2.3, 2.5).
            raise ProxyError(505, "HTTP version not supported", SUPPORTED_VERSIONS, close=True)
        if request.method == "CONNECT":
            raise ProxyError(
                405,
                "CONNECT refused",
                "this is a reverse proxy for its configured upstreams, not a forward proxy or tunnel",
                close=True,
                headers={"Allow": ALLOWED_METHODS},
            )
        if request.method == "TRACE":
            # TRACE echoes the request as the upstream received it: our signed Authorization and
            # security token included (cross-site tracing). Nothing legitimate needs it here.
            raise ProxyError(
                405,
                "TRACE refused",
                "TRACE would echo the signed request, credentials included",
                headers={"Allow": ALLOWED_METHODS},
            )
        if not request.raw_path.startswith("/"):
            split_target(request.raw_path)  # absolute-form (`GET http://other/ HTTP/1.1`) or `*`: 400
        self.check_host(request)
        self.check_origin(request)
        return None

    def check_host(self, request: web.BaseRequest) -> None:
        # Only the name is checked, not the port: a container's port may be published as another.
        # No Host at all is an HTTP/1.0 client, never a browser (they always send one).
        value = request.headers.get("Host")
        if value is None or value in self._accepted_hosts:
            return
        if not HOST_VALUE.fullmatch(value):
            raise ProxyError(
                400, "malformed Host", f"Host {_shown(value)} is not host[:port] (RFC 9112 section 3.2)", close=True
            )
        if split_authority(value)[0] in self.hosts:
            if len(self._accepted_hosts) < ACCEPTED_HOSTS_KEPT:  # bounded: ports and spellings vary
                self._accepted_hosts.add(value)
            return
        raise ProxyError(
            421,
            "unknown host",
            f"Host {_shown(value)} does not name this proxy (DNS rebinding?); "
            "if it is a name you use for it, add it to allowed_hosts (--allowed-host)",
            close=True,
        )

    def check_origin(self, request: web.BaseRequest) -> None:
        origin = request.headers.get("Origin")
        if origin is not None:
            if self._cors.allowed(origin) or self.is_own_origin(request, origin):
                return
            raise ProxyError(
                403,
                "cross-origin request refused",
                f"Origin {_shown(origin)} may not use this proxy; "
                "if it is your front-end, add it to cors_origins (--cors-origin)",
                close=True,
            )
        # Without an Origin (navigations, images, no-cors GETs), the browser still says where the
        # request comes from: cross-site means another site's page made it.
        if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            raise ProxyError(
                403,
                "cross-site request refused",
                "a page of another site made this request (Sec-Fetch-Site: cross-site); "
                "open the URL directly, or list your front-end in cors_origins (--cors-origin)",
                close=True,
            )

    def is_own_origin(self, request: web.BaseRequest, origin: str) -> bool:
        """A page the proxy itself served: http, a name of the proxy, the port the browser used."""
        scheme, sep, authority = origin.partition("://")
        if scheme.lower() != "http" or not sep:
            return False
        host, port = split_authority(authority)
        if host not in self.hosts:
            return False
        ports = {_local_port(request)}
        if "Host" in request.headers:
            ports.add(split_authority(request.headers["Host"])[1] or 80)
        return (port or 80) in ports


class ClientToken:
    """Addon: a shared secret for shared dev hosts; the proxy strips it before forwarding."""

    def __init__(self, token: str) -> None:
        self._digest = _digest(token)

    async def on_request(self, request: web.BaseRequest) -> web.StreamResponse | None:
        presented = request.headers.get("X-Proxy-Token")
        if presented is None:
            scheme, _, value = request.headers.get("Proxy-Authorization", "").strip().partition(" ")
            presented = value.strip() if scheme.lower() == "bearer" else None
        challenge = {"WWW-Authenticate": 'Bearer realm="sigv4-proxy"'}
        if presented is None:
            raise ProxyError(
                401,
                "client token required",
                "send the proxy's client_token as X-Proxy-Token or as a Bearer token in Proxy-Authorization",
                close=True,
                headers=challenge,
            )
        # Constant time, over digests: the comparison tells an attacker neither how many leading
        # bytes matched nor how long the token is.
        if not hmac.compare_digest(_digest(presented), self._digest):
            raise ProxyError(401, "client token rejected", "the client token does not match", close=True, headers=challenge)
        return None


def safety_addons(settings: Settings) -> list[Addon]:
    """The guard first, then CORS (a preflight cannot carry the token), then the token check."""
    cors = Cors(settings)
    addons: list[Addon] = [RequestGuard(settings, cors), cors]
    if settings.client_token is not None:
        addons.append(ClientToken(settings.client_token.get_secret_value()))
    return addons


def check_exposure(settings: Settings) -> None:
    """Say at start-up who may make the proxy sign; listening beyond loopback is a loud choice."""
    if settings.cors_origins:
        log.info("browsers: front-ends allowed by CORS: %s", ", ".join(settings.cors_origins))
    if settings.allowed_hosts:
        log.info("browsers: Host names accepted besides loopback: %s", ", ".join(settings.allowed_hosts))
    host, _ = parse_listen(settings.listen)
    if is_loopback(host):
        return
    if not settings.allow_remote:
        raise ConfigError(
            f"--listen {settings.listen} is reachable from other machines, and anything that reaches the "
            "proxy signs with your AWS identity: pass --allow-remote to mean it (and consider --client-token)"
        )
    log.warning(
        "listening on %s beyond loopback (--allow-remote): %s",
        settings.listen,
        "clients must send the client token"
        if settings.client_token is not None
        else "anyone who can reach it can sign requests with your AWS identity (set client_token)",
    )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _local_port(request: web.BaseRequest) -> int | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    return sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None


def _shown(value: str) -> str:
    """A client-chosen value fit for a log line and a JSON reason: quoted, bounded."""
    return repr(value if len(value) <= 100 else value[:100] + "…")
