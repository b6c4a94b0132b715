"""A real `python -m proxy` process for tests that need signals, exit codes or a fresh interpreter."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from yarl import URL

from proxy.signing import Credentials

# What proxy/outbound_proxy.py reads (in either case), and ALL_PROXY, which other HTTP clients read.
OUTBOUND_PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "no_proxy", "all_proxy"})
REPO = Path(__file__).resolve().parent.parent
# describe_routes() logs this once the port is bound: the process is ready for requests from then on.
_LISTENING = re.compile(r"http://127\.0\.0\.1:(\d+)/ -> ")


def isolated_env(credentials: Credentials | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without any AWS or proxy settings (ours, and the outbound proxy
    variables: HTTPS_PROXY and the like), so the test decides all of them."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("AWS_", "SIGV4_PROXY_")) and k.lower() not in OUTBOUND_PROXY_VARIABLES
    }
    env.update(
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",  # never probe 169.254.169.254 from a test
        PYTHONUNBUFFERED="1",
    )
    if credentials is not None:
        env.update(AWS_ACCESS_KEY_ID=credentials.access_key, AWS_SECRET_ACCESS_KEY=credentials.secret_key)
    env.update(extra or {})
    return env


@dataclass
class ProxyProcess:
    process: asyncio.subprocess.Process
    port: int
    log: list[str] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> URL:
        return URL(f"http://127.0.0.1:{self.port}")

    def send(self, sig: signal.Signals) -> float:
        """Send a signal; return when, on the monotonic clock."""
        self.process.send_signal(sig)
        return time.monotonic()

    async def exit_code(self, within: float) -> int:
        return await asyncio.wait_for(self.process.wait(), within)

    async def wait_refusing(self, within: float = 2.0) -> float:
        """Poll until a new TCP connection is refused (the listener is closed); return when."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except (ConnectionRefusedError, ConnectionResetError):  # a reset: accepted as the listener closed
                return time.monotonic()
            writer.close()
            await asyncio.sleep(0.02)
        raise AssertionError(f"port {self.port} still accepts connections {within}s after the signal")

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._drain is not None:
            await self._drain


async def spawn(*args: str, env: Mapping[str, str], startup: float = 15.0) -> ProxyProcess:
    """Start `python -m proxy ARGS` (cwd: this checkout) and wait until it listens."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args,
        cwd=REPO, env=dict(env), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    log: list[str] = []
    try:
        async with asyncio.timeout(startup):
            while True:
                line = (await process.stderr.readline()).decode(errors="replace")
                if not line:
                    raise AssertionError(f"proxy exited before listening:\n{''.join(log)}")
                log.append(line)
                match = _LISTENING.search(line)
                if match:
                    break
    except BaseException:
        process.kill()
        await process.wait()
        raise
    proxy = ProxyProcess(process, int(match.group(1)), log)
    proxy._drain = asyncio.create_task(_collect(process.stderr, log))  # a full pipe would block the proxy
    return proxy


async def _collect(stream: asyncio.StreamReader, log: list[str]) -> None:
    async for line in stream:
        log.append(line.decode(errors="replace"))
