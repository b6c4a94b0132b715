"""pyproject.toml: dependencies in compatible ranges, a [test] extra, the version from metadata.

The wheel itself is built and installed in a fresh venv by scripts/check-container.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import version

import pytest
from packaging.requirements import Requirement

from proxy_process import REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize(
    "requirement",
    PROJECT["dependencies"] + PROJECT["optional-dependencies"]["test"],
)
def test_every_dependency_has_a_compatible_range(requirement: str) -> None:
    """A floor we test against and a ceiling below the next major release, which may break us."""
    operators = {spec.operator for spec in Requirement(requirement).specifier}
    assert operators & {">=", "~="}, f"{requirement}: no lower bound"
    assert operators & {"<", "~="}, f"{requirement}: no upper bound"


def test_test_extra_and_console_script() -> None:
    assert any(Requirement(r).name == "pytest" for r in PROJECT["optional-dependencies"]["test"])
    assert PROJECT["scripts"]["sigv4-proxy"] == "proxy.cli:main"


def test_version_comes_from_package_metadata() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sigv4-proxy {version('sigv4-proxy')}"
