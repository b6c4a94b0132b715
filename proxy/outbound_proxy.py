"""The outbound HTTP proxy the environment names, chosen per upstream as Go's net/http does.

Corporate networks often reach CloudFront only through a proxy named in HTTPS_PROXY. The Go
proxy users compare us with honours it through `http.ProxyFromEnvironment`, and botocore (our
STS/SSO calls) honours it too, so the upstream client follows the same rules, those of
golang.org/x/net/http/httpproxy:

- https:// upstreams use HTTPS_PROXY, http:// upstreams HTTP_PROXY; each falls back to its lower
  case spelling only when the upper case one is unset or empty. There is no fallback from one
  scheme to the other, and ALL_PROXY is not read.
- A value without a scheme means http:// ("proxy.corp:3128"); without a port, 80. Only http://
  proxies are supported here: https:// and socks proxies are a start-up error, not a surprise at
  the first request.
- NO_PROXY (or no_proxy): comma-separated; `*` turns proxying off; IP addresses and CIDR ranges
  match IP hosts; a domain name matches itself and its subdomains, `.example.com` (or
  `*.example.com`) only its subdomains; any entry but a CIDR range may end in `:port`.
  `localhost` and loopback addresses are never proxied, whatever NO_PROXY says.

The credentials in a proxy URL become a Proxy-Authorization value. They are never shown: an
OutboundProxy prints as host:port, and error messages name only that.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The proxy port when the URL has none: Go's, for an http:// proxy (curl would take 1080).
DEFAULT_PORT = 80


class ProxySettingError(ValueError):
    """A proxy variable the client cannot use: one line naming the variable, never credentials."""


@dataclass(frozen=True, slots=True)
class OutboundProxy:
    """An http:// proxy: where to connect, and the Proxy-Authorization value if it has credentials."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)  # "Basic ...": a secret

    @property
    def address(self) -> str:
        """host:port, brackets around an IPv6 address; what logs and errors show."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.address


def parse_proxy_url(value: str, variable: str) -> OutboundProxy:
    """The proxy a variable's value names; ProxySettingError says why it cannot be used."""
    value = value.strip()
    if "://" not in value:
        value = "http://" + value  # "proxy.corp:3128", as Go and curl read it
    try:
        url = URL(value)
        host = url.raw_host
        scheme = url.scheme.lower()
        port = url.port if scheme == "http" else None
    except (ValueError, TypeError):
        # yarl's reasons may quote the value, and the value may hold a password: not repeated.
        raise ProxySettingError(f"{variable} is not a proxy URL (expected http://[user:password@]host[:port])") from None
    if not host:
        raise ProxySettingError(f"{variable} names no proxy host (expected http://[user:password@]host[:port])")
    where = f"[{host}]" if ":" in host else host
    if scheme != "http":
        raise ProxySettingError(
            f"{variable}: {scheme}:// proxies are not supported, only http:// ones (proxy {where})"
        )
    if port is None:
        port = DEFAULT_PORT
    if not 0 < port < 65536:
        raise ProxySettingError(f"{variable}: port {port} of proxy {where} is not a TCP port")
    authorization = None
    if url.raw_user is not None or url.raw_password is not None:
        # Go's basicAuth: the percent-decoded user and password, joined by a colon, in UTF-8.
        pair = f"{url.user or ''}:{url.password or ''}".encode("utf-8", "surrogateescape")
        authorization = "Basic " + base64.b64encode(pair).decode("ascii")
    return OutboundProxy(host, port, authorization)


@dataclass(frozen=True, slots=True)
class _Domain:
    suffix: str  # always with its leading dot: ".example.com"
    port: str  # "" for any port
    exact_too: bool  # "example.com" matches example.com itself; ".example.com" does not

    def matches(self, host: str, port: str) -> bool:
        if host.endswith(self.suffix) or (self.exact_too and host == self.suffix[1:]):
            return not self.port or self.port == port
        return False


@dataclass(frozen=True, slots=True)
class _Address:
    ip: IPAddress
    port: str

    def matches(self, ip: IPAddress, port: str) -> bool:
        return ip == self.ip and (not self.port or self.port == port)


@dataclass(frozen=True, slots=True)
class NoProxy:
    """The parsed NO_PROXY list. Malformed entries are skipped, as Go does."""

    everything: bool = False
    networks: tuple[IPNetwork, ...] = ()
    addresses: tuple[_Address, ...] = ()
    domains: tuple[_Domain, ...] = ()

    @classmethod
    def parse(cls, value: str) -> NoProxy:
        networks: list[IPNetwork] = []
        addresses: list[_Address] = []
        domains: list[_Domain] = []
        for entry in value.split(","):
            entry = entry.strip().lower()
            if not entry:
                continue
            if entry == "*":
                return cls(everything=True)
            if "/" in entry:  # a CIDR range (no port)
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    pass
                continue
            host, port = _split_port(entry)
            if not host:
                continue
            ip = _ip(host)
            if ip is not None:
                addresses.append(_Address(ip, port))
                continue
            if host.startswith("*."):
                host = host[1:]
            exact_too = not host.startswith(".")
            name = _ascii(host.lstrip("."))
            if name:
                domains.append(_Domain("." + name, port, exact_too))
        return cls(False, tuple(networks), tuple(addresses), tuple(domains))

    def bypasses(self, host: str, port: int) -> bool:
        """Whether a request to host:port goes direct. `host` is the ASCII (IDNA) form, without
        brackets. Loopback always does, as in Go."""
        host = host.lower()
        if host == "localhost":
            return True
        ip = _ip(host)
        if ip is not None and _is_loopback(ip):
            return True
        if self.everything:
            return True
        port_text = str(port)
        if ip is not None:
            if any(ip in network for network in self.networks):
                return True
            if any(address.matches(ip, port_text) for address in self.addresses):
                return True
        return any(domain.matches(host, port_text) for domain in self.domains)


@dataclass(frozen=True, slots=True)
class OutboundProxies:
    """What the environment says, read once at start-up."""

    http: OutboundProxy | None = None
    https: OutboundProxy | None = None
    no_proxy: NoProxy = NoProxy()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> OutboundProxies:
        """Raises ProxySettingError for a proxy URL the client cannot use."""
        http, http_name = _first_set(environ, "HTTP_PROXY", "http_proxy")
        https, https_name = _first_set(environ, "HTTPS_PROXY", "https_proxy")
        no_proxy, _ = _first_set(environ, "NO_PROXY", "no_proxy")
        return cls(
            parse_proxy_url(http, http_name) if http else None,
            parse_proxy_url(https, https_name) if https else None,
            NoProxy.parse(no_proxy),
        )

    def for_upstream(self, secure: bool, host: str, port: int) -> OutboundProxy | None:
        """The proxy for requests to this upstream, or None to connect directly."""
        chosen = self.https if secure else self.http
        if chosen is None or self.no_proxy.bypasses(host, port):
            return None
        return chosen


def _first_set(environ: Mapping[str, str], *names: str) -> tuple[str, str]:
    """Go's getEnvAny: the first of the names with a non-empty value, and that name."""
    for name in names:
        value = environ.get(name)
        if value:
            return value, name
    return "", names[0]


def _split_port(entry: str) -> tuple[str, str]:
    """host, port ("" when none) of "host", "host:port", "1.2.3.4:80", "::1" or "[::1]:80"."""
    if entry.startswith("["):
        inside, _, rest = entry[1:].partition("]")
        return inside, rest[1:] if rest.startswith(":") else ""
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, ""  # a name, or an IPv6 address without brackets (and so without a port)


def _ascii(name: str) -> str | None:
    """A domain name in its IDNA form, as hosts are compared (None when it is no host name)."""
    if name.isascii():
        return name
    try:
        return URL.build(scheme="http", host=name).raw_host
    except ValueError:
        return None


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_loopback(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback  # ::ffff:127.0.0.1 (Go sees it as 127.0.0.1)
    return ip.is_loopback
