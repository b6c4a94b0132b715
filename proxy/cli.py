"""`sigv4-proxy [run|demo] [options]`: parse the command line, load settings, start."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from proxy.config import ConfigError, Settings, load_settings, resolve_routes
from proxy.logs import configure_logging

COMMANDS = ("run", "demo", "check")


def package_version() -> str:
    try:
        return version("sigv4-proxy")
    except PackageNotFoundError:
        return "0+unknown"


def _options() -> argparse.ArgumentParser:
    """Options shared by every sub-command; SUPPRESS keeps unset ones out of the CLI source."""
    p = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML config file (env SIGV4_PROXY_CONFIG)")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:8080)")
    p.add_argument("--upstream", metavar="URL", help="where requests go, e.g. https://d111111abcdef8.cloudfront.net")
    p.add_argument("--sign-host", dest="sign_host", metavar="HOST", help="host to sign for (default: the upstream's)")
    p.add_argument("--region", help="signing region (inferred from AWS host names)")
    p.add_argument("--service", help="signing service, e.g. execute-api (inferred from AWS host names)")
    p.add_argument("--profile", help="AWS profile for credentials")
    p.add_argument("--role-arn", dest="role_arn", metavar="ARN", help="role to assume with the base credentials")
    p.add_argument("--role-session-name", dest="role_session_name", metavar="NAME",
                   help="STS session name (default sigv4-proxy-<hostname>, or AWS_ROLE_SESSION_NAME)")
    p.add_argument("--external-id", dest="external_id", metavar="ID", help="external ID the role's trust policy requires")
    p.add_argument("--origin-path", dest="origin_path", metavar="PATH",
                   help="CloudFront origin path (e.g. /prod): included in the signed path, not sent")
    p.add_argument("--signed-header", dest="signed_headers", action="append", metavar="NAME",
                   help="also sign this client header (repeatable); only headers no hop changes")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="wait for upstream response headers (default 60)")
    p.add_argument("--connect-timeout", dest="connect_timeout", type=float, metavar="SECONDS",
                   help="TCP/TLS connect to the upstream (default 10)")
    p.add_argument("--idle-timeout", dest="idle_timeout", type=float, metavar="SECONDS",
                   help="longest silence inside a streamed response or request body (default 300, 0 = none)")
    p.add_argument("--max-body-size", dest="max_body_size", type=int, metavar="BYTES", help="default 10485760")
    p.add_argument("--query-plus", dest="query_plus", choices=("space", "plus"),
                   help="what a raw '+' in a client query means (default space)")
    p.add_argument("--ca-bundle", dest="ca_bundle", type=Path, metavar="FILE", help="CA bundle for upstream TLS")
    p.add_argument("--insecure", action="store_true", help="do not verify upstream TLS (logs a warning)")
    p.add_argument("--log-level", dest="log_level", choices=("debug", "info", "warning", "error"))
    # Browsers and safety (proxy/guard.py, proxy/cors.py)
    p.add_argument("--cors-origin", dest="cors_origins", action="append", metavar="ORIGIN",
                   help="front-end origin allowed to call the proxy, e.g. http://localhost:3000 (repeatable)")
    p.add_argument("--cors-expose-header", dest="cors_expose_headers", action="append", metavar="NAME",
                   help="response header a front-end may read besides the safelisted ones (repeatable)")
    p.add_argument("--cors-allow-credentials", dest="cors_allow_credentials", action="store_true",
                   help="let fetch(..., {credentials: 'include'}) read responses (cookies)")
    p.add_argument("--cors-max-age", dest="cors_max_age", type=int, metavar="SECONDS",
                   help="how long a browser may cache a preflight answer (default 600)")
    p.add_argument("--allowed-host", dest="allowed_hosts", action="append", metavar="NAME",
                   help="another Host name the proxy answers to besides localhost/127.0.0.1/[::1] (repeatable)")
    p.add_argument("--allow-remote", dest="allow_remote", action="store_true",
                   help="allow --listen on a non-loopback address (logs a warning)")
    p.add_argument("--client-token", dest="client_token", metavar="TOKEN",
                   help="require this secret as X-Proxy-Token (better: env SIGV4_PROXY_CLIENT_TOKEN, not in ps)")

    # Observability: 403 diagnosis, logs, health and metrics.
    p.add_argument("--log-format", dest="log_format", choices=("text", "json"), help="log lines as text (default) or JSON")
    p.add_argument("--debug-signing", dest="debug_signing", action="store_true",
                   help="log each canonical request and string to sign (secrets masked)")
    p.add_argument("--reserved-prefix", dest="reserved_prefix", metavar="PATH",
                   help="path prefix of the proxy's own health and metrics endpoints (default /__sigv4proxy/)")

    # Graceful shutdown (sidecar containers)
    p.add_argument("--shutdown-grace", dest="shutdown_grace", type=float, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, let in-flight requests finish this long (default 10)")
    return p


def build_parser() -> argparse.ArgumentParser:
    options = _options()
    parser = argparse.ArgumentParser(
        prog="sigv4-proxy",
        description="Local reverse proxy that signs requests with AWS SigV4 for one host and sends them to another.",
        epilog="Without a command, `run` is meant: sigv4-proxy --upstream URL --sign-host HOST. "
        "See `sigv4-proxy run --help` for every option.",
    )
    parser.add_argument("--version", action="version", version=f"sigv4-proxy {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="{run,demo,check}")
    commands.add_parser("run", parents=[options], help="run the proxy (the default command)")
    commands.add_parser("demo", parents=[options], help="run the proxy against a built-in local upstream (no AWS account)")
    check = commands.add_parser(
        "check", parents=[options], help="validate config and credentials, send one signed probe, say why it failed"
    )
    check.add_argument("--path", default="/", help="path (and query) of the probe request (default /)")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        argv = ["run", *argv]
    return build_parser().parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    cli: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in ("command", "config", "path")}
    config = getattr(args, "config", None) or os.environ.get("SIGV4_PROXY_CONFIG")
    return load_settings(cli, Path(config) if config else None)


def skip_unused_awscrt() -> None:
    """botocore imports awscrt whenever it is installed (the demo's verifier needs it), though
    nothing here signs with it: 5.5 MiB of resident memory. Marking it absent before botocore
    loads puts botocore on its ordinary no-CRT path."""
    sys.modules.setdefault("awscrt", None)  # type: ignore[arg-type]


async def run_proxy(settings: Settings) -> int:
    from proxy.server import serve_until_signalled, start_proxy

    proxy = await start_proxy(settings, resolve_routes(settings))
    await serve_until_signalled(proxy, settings.shutdown_grace)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command != "demo":
        skip_unused_awscrt()
    # Imported only now, after the line above: both load botocore.
    from proxy.credentials import CredentialsUnavailable
    from proxy.server import StartupError, run

    try:
        settings = settings_from(args)
        configure_logging(settings.log_level, settings.log_format)
        if args.command == "check":
            from proxy.check import run_check

            return run(lambda: run_check(settings, args.path))
        if args.command == "demo":
            from proxy.demo import run_demo

            return run(lambda: run_demo(settings))
        resolve_routes(settings)  # fail on a bad route before touching credentials
        return run(lambda: run_proxy(settings))
    except (ConfigError, StartupError, CredentialsUnavailable) as exc:
        print(f"sigv4-proxy: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
