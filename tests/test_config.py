"""Settings sources and precedence, route resolution, and the inference of region and service."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, load_settings, resolve_routes


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SIGV4_PROXY_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("host", "region", "service"),
    [
        ("abc123.execute-api.ap-northeast-1.amazonaws.com", "ap-northeast-1", "execute-api"),
        ("abcdefghij.lambda-url.eu-west-1.on.aws", "eu-west-1", "lambda"),
        ("search-logs-abc.us-east-2.es.amazonaws.com", "us-east-2", "es"),
        ("abc.eu-central-1.aoss.amazonaws.com", "eu-central-1", "aoss"),
    ],
)
def test_region_and_service_inferred_from_aws_host_names(host: str, region: str, service: str) -> None:
    (route,) = resolve_routes(load_settings({"upstream": "https://d111111abcdef8.cloudfront.net", "sign_host": host}, None))
    assert (route.region, route.service, route.sign_host) == (region, service, host)


def test_custom_domain_requires_region_and_service() -> None:
    settings = load_settings({"upstream": "https://api.example.com"}, None)
    with pytest.raises(ConfigError, match=r"set --region and --service"):
        resolve_routes(settings)
    (route,) = resolve_routes(load_settings({"upstream": "https://api.example.com", "region": "us-east-1", "service": "execute-api"}, None))
    assert route.sign_host == "api.example.com"


def test_precedence_cli_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text('listen = "127.0.0.1:7001"\ntimeout = 5\nmax_body_size = 100\nupstream = "https://file.example"\n')
    monkeypatch.setenv("SIGV4_PROXY_TIMEOUT", "7")
    monkeypatch.setenv("SIGV4_PROXY_LISTEN", "127.0.0.1:7002")
    settings = load_settings({"listen": "127.0.0.1:7003"}, config)
    assert settings.listen == "127.0.0.1:7003"  # CLI
    assert settings.timeout == 7  # env over file
    assert settings.max_body_size == 100  # file over default
    assert settings.upstream == "https://file.example"
    assert settings.connect_timeout == 10  # default


def test_routes_from_file_longest_prefix_first(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(
        """
[[routes]]
prefix = "/api"
upstream = "https://d1.cloudfront.net/prod"
sign_host = "a1.execute-api.us-east-1.amazonaws.com"

[[routes]]
prefix = "/api/search"
upstream = "https://search.example"
sign_host = "s.eu-west-1.es.amazonaws.com"
strip_prefix = true
"""
    )
    routes = resolve_routes(load_settings({"upstream": "https://d2.cloudfront.net", "sign_host": "b.execute-api.us-west-2.amazonaws.com"}, config))
    assert [r.prefix for r in routes] == ["/api/search", "/api", "/"]
    assert routes[0].service == "es" and routes[0].strip_prefix
    assert routes[1].upstream_path == "/prod"


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({}, "no upstream"),
        ({"upstream": "ftp://x"}, r"http\(s\) URL"),
        ({"upstream": "https://x.example", "listen": "nonsense"}, "listen"),
        ({"upstream": "https://x.example", "timeout": -1}, "timeout"),
        ({"upstream": "https://x.example", "nonsense_key": 1}, "nonsense_key"),
        ({"upstream": "https://x.example", "signed_headers": ["bad header"]}, "not an HTTP header name"),
    ],
)
def test_invalid_settings_say_what_is_wrong(cli: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_routes(load_settings(cli, None))


def test_malformed_toml_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("listen = \n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_settings({}, config)


def test_list_settings_from_the_environment_as_json_or_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGV4_PROXY_SIGNED_HEADERS", "x-a, X-B")
    assert load_settings({}, None).signed_headers == ["x-a", "X-B"]
    monkeypatch.setenv("SIGV4_PROXY_SIGNED_HEADERS", '["x-c"]')
    assert load_settings({}, None).signed_headers == ["x-c"]
    monkeypatch.setenv("SIGV4_PROXY_SIGNED_HEADERS", "[not json")
    with pytest.raises(ConfigError, match=r"invalid setting signed_headers \(from SIGV4_PROXY_SIGNED_HEADERS\)"):
        load_settings({}, None)


@pytest.mark.parametrize(("source", "named"), [("cli", "(--timeout)"), ("env", "(from SIGV4_PROXY_TIMEOUT)"),
                                               ("file", "(in ")])
def test_an_invalid_value_names_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str, named: str
) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text('upstream = "https://d1.cloudfront.net"\n' + ('timeout = "abc"\n' if source == "file" else ""))
    if source == "env":
        monkeypatch.setenv("SIGV4_PROXY_TIMEOUT", "abc")
    with pytest.raises(ConfigError) as raised:
        load_settings({"timeout": "abc"} if source == "cli" else {}, config)
    assert str(raised.value).startswith(f"invalid setting timeout {named}")
