"""A pytest plugin: every log line any test produces is grepped for secrets, and the test that
leaked one fails (issue 4: "a test greps every log of the suite for the secrets it used").

The proxy's loggers are captured at DEBUG, everything else at WARNING. Secrets are the
`Credentials` defined at module level in conftest and in the test's module, plus shapes that are
secret whatever their value: a full SigV4 signature, an unmasked session-token line, an
Authorization value. Subprocesses are not covered here; their tests grep their own output.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from proxy.signing import Credentials

SHAPES = [
    re.compile(r"Signature=[0-9a-f]{64}"),
    re.compile(r"x-amz-security-token[:=](?!<redacted>)\S", re.I),
    re.compile(r"authorization[:=]\s*(?!<redacted>)(AWS4|Bearer|Basic)", re.I),
]


def known_secrets(module: object) -> set[str]:
    found: set[str] = set()
    for source in (sys.modules.get("conftest"), module):
        for value in vars(source).values() if source is not None else ():
            if isinstance(value, Credentials):
                found.update(v for v in (value.access_key, value.secret_key, value.token) if v)
    return found


@pytest.fixture(autouse=True)
def no_secret_in_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    buffer = io.StringIO()
    ours = logging.StreamHandler(buffer)
    ours.setLevel(logging.DEBUG)
    others = logging.StreamHandler(buffer)
    others.setLevel(logging.WARNING)
    others.addFilter(lambda record: not record.name.startswith("sigv4_proxy"))
    proxy_logger, root = logging.getLogger("sigv4_proxy"), logging.getLogger()
    level = proxy_logger.level
    proxy_logger.setLevel(logging.DEBUG)
    proxy_logger.addHandler(ours)
    root.addHandler(others)
    try:
        yield
    finally:
        proxy_logger.removeHandler(ours)
        root.removeHandler(others)
        proxy_logger.setLevel(level)
    text = buffer.getvalue()
    leaks = [s for s in known_secrets(request.module) if s in text]
    leaks += [m.group(0) for shape in SHAPES for m in shape.finditer(text)]
    if leaks:
        shown = sorted({leak[:12] + "..." for leak in leaks})[:5]  # enough to find it, not the whole secret
        pytest.fail(f"secret(s) in the log of {request.node.nodeid}: {shown}", pytrace=False)
