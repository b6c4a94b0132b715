"""config.example.toml documents every setting, and what it documents really loads.

Generic over the models' fields: a setting added to `Settings` or `RouteSettings` without a line
in the example fails here, naming the missing key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from proxy.config import RouteSettings, Settings, load_settings, resolve_routes
from proxy_process import REPO

EXAMPLE = REPO / "config.example.toml"
# A key line, set (`key = ...`) or shown commented out (`# key = ...`).
KEY_LINE = re.compile(r"^(?:#\s?)?([a-z_][a-z0-9_]*)\s*=", re.MULTILINE)
ROUTES_TABLE = "[[routes]]"


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("SIGV4_PROXY_")]:
        monkeypatch.delenv(name)


def sections(text: str) -> tuple[str, list[str]]:
    """The top-level part (Settings) and each [[routes]] table (RouteSettings)."""
    top, *routes = text.split(f"\n{ROUTES_TABLE}\n")
    return top, routes


def documented(section: str) -> list[str]:
    return KEY_LINE.findall(section)


def missing(model: type[BaseModel], keys: set[str]) -> list[str]:
    return sorted(set(model.model_fields) - keys)


def test_every_top_level_setting_is_documented() -> None:
    top, routes = sections(EXAMPLE.read_text())
    keys = set(documented(top)) | ({"routes"} if routes else set())
    assert not missing(Settings, keys), f"config.example.toml does not document: {missing(Settings, keys)}"


def test_every_route_setting_is_documented_in_a_routes_table() -> None:
    _, routes = sections(EXAMPLE.read_text())
    keys = {key for table in routes for key in documented(table)}
    assert not missing(RouteSettings, keys), (
        f"config.example.toml's [[routes]] tables do not document: {missing(RouteSettings, keys)}"
    )


def test_example_loads_with_a_cloudfront_api_gateway_route_and_more_routes() -> None:
    routes = {r.prefix: r for r in resolve_routes(load_settings({}, EXAMPLE))}
    main = routes["/"]
    assert main.upstream_origin == "https://d111111abcdef8.cloudfront.net"
    # Signed for API Gateway, sent to CloudFront; region and service inferred from the host.
    assert (main.sign_host, main.region, main.service) == (
        "abc123.execute-api.ap-northeast-1.amazonaws.com", "ap-northeast-1", "execute-api",
    )
    assert len(routes) >= 3, "the multi-route example is missing"
    billing = routes["/billing"]
    assert billing.strip_prefix and billing.upstream_path == "/prod" and billing.role_arn


def uncomment(text: str) -> str:
    return re.sub(r"^#\s?(?=[a-z_][a-z0-9_]*\s*=)", "", text, flags=re.MULTILINE)


def test_every_commented_example_is_valid(tmp_path: Path) -> None:
    """Uncomment every `# key = value` line: the result still loads and resolves (no stale keys,
    no wrong types, no key shown twice in one table)."""
    text = uncomment(EXAMPLE.read_text())
    top, routes = sections(text)
    for section in (top, *routes):
        keys = documented(section)
        assert len(keys) == len(set(keys)), f"a key is shown twice in one table: {sorted(keys)}"
    everything = tmp_path / "everything.toml"
    everything.write_text(text)
    resolve_routes(load_settings({}, everything))


def test_commented_top_level_settings_show_their_defaults(tmp_path: Path) -> None:
    """Where a setting has a default, its commented-out line shows that default, not a stale one."""
    top, _ = sections(EXAMPLE.read_text())
    commented = set(re.findall(r"^#\s?([a-z_][a-z0-9_]*)\s*=", top, flags=re.MULTILINE))
    only_top = tmp_path / "top.toml"
    only_top.write_text(uncomment(top))
    shown = load_settings({}, only_top)
    checked = 0
    for name in sorted(commented):
        default = Settings.model_fields[name].get_default(call_default_factory=True)
        if default is None or default == []:
            continue  # no default to show: the line is an example value
        value = getattr(shown, name)
        assert value == default, f"config.example.toml shows {name} = {value!r}, the default is {default!r}"
        checked += 1
    assert checked >= 5
