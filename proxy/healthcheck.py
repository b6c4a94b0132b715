"""`python -m proxy.healthcheck [URL]`: exit 0 when the proxy's health endpoint answers 200.

The container image's HEALTHCHECK runs this: slim images have no curl, and the standard library
is enough. Without a URL it asks the proxy this container runs, at the address SIGV4_PROXY_LISTEN
names, under the reserved prefix that is never forwarded upstream (SIGV4_PROXY_RESERVED_PREFIX);
with SIGV4_PROXY_CLIENT_TOKEN set it presents the token, as the proxy then asks every caller to.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

from proxy.config import parse_listen

HEALTH_PATH = "/__sigv4proxy/health"
TOKEN_HEADER = "X-Proxy-Token"
# A wildcard bind address accepts on loopback too; it is not an address to connect to.
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def default_url(environ: Mapping[str, str] = os.environ) -> str:
    host, port = parse_listen(environ.get("SIGV4_PROXY_LISTEN", "127.0.0.1:8080"))
    host = _WILDCARD_TO_LOOPBACK.get(host, host)
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal in a URL (RFC 3986 section 3.2.2)
    prefix = environ.get("SIGV4_PROXY_RESERVED_PREFIX", "").strip("/")
    path = f"/{prefix}/health" if prefix else HEALTH_PATH  # the proxy's own normalization (config.py)
    return f"http://{host}:{port}{path}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is not health: report the 3xx instead of following it somewhere else."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def probe(url: str, timeout: float, token: str | None = None) -> tuple[bool, str]:
    """(healthy, one line saying why)."""
    # No ProxyHandler settings: HTTP(S)_PROXY in a container is for egress, never for loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    request = urllib.request.Request(url, headers={TOKEN_HEADER: token} if token else {})
    try:
        with opener.open(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return False, f"{url}: no answer ({reason})"
    return status == 200, f"{url}: HTTP {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.healthcheck",
        description="Exit 0 when the sigv4-proxy health endpoint answers 200, 1 otherwise.",
    )
    parser.add_argument("url", nargs="?", help=f"default: {HEALTH_PATH} at SIGV4_PROXY_LISTEN (127.0.0.1:8080)")
    parser.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    try:
        url = args.url or default_url()
    except ValueError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    healthy, line = probe(url, args.timeout, os.environ.get("SIGV4_PROXY_CLIENT_TOKEN") or None)
    print(line, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
