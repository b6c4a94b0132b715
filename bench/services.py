"""The processes a benchmark run starts: the upstream (nginx, or aiohttp without it), the proxy, the
baseline passthrough, all on 127.0.0.1, each pinned to its CPU, each stopped when the run ends."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The proxy gets CPU 0 to itself; load generators and upstreams share CPU 1 (the setup).
PROXY_CPU = "0"
LOAD_CPU = "1"
SIGN_HOST = "abc123.execute-api.us-east-1.amazonaws.com"
MiB = 1024 * 1024
SMALL_JSON = b'{"items":[{"id":1,"name":"alpha"},{"id":2,"name":"beta"}],"next":null,"count":2}\n'

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy_temp;
    fastcgi_temp_path {tmp}/fastcgi_temp;
    uwsgi_temp_path {tmp}/uwsgi_temp;
    scgi_temp_path {tmp}/scgi_temp;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port};
        root {www};
        location = /small.json {{ default_type application/json; }}
        location = /big.bin {{ default_type application/octet-stream; }}
        # The POST sink must read the whole body before it answers: `return` alone answers first
        # and discards the body later, which wrk cannot handle (it stalls mid-upload). The proxy
        # module reads the full body into memory first, then asks /ok without the body.
        location = /upload {{
            client_max_body_size 16m;
            client_body_buffer_size 16m;
            proxy_pass http://127.0.0.1:{port}/ok;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}
        location = /ok {{
            default_type application/json;
            return 200 '{{"ok":true}}\n';
        }}
        # Timed events come from the aiohttp upstream; unbuffered so each event passes at once.
        location = /events {{
            proxy_pass http://127.0.0.1:{sse_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cpu: str, argv: list[str]) -> list[str]:
    """argv run on one CPU with taskset (exec'd, so the pid is the program's own)."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpu, *argv]
    return argv


def wait_until_serving(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"GET /small.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args} did not serve on port {port} within {timeout:g}s:\n{log.read_text()[-2000:]}")


@dataclass
class Service:
    """One started server process and the port it answers on."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(name: str, argv: list[str], port: int, tmp: Path, env: dict[str, str] | None = None) -> Service:
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    service = Service(name, port, proc, log)
    try:
        wait_until_serving(port, proc, log)
    except BaseException:
        service.stop()
        raise
    return service


@dataclass
class Upstream:
    """The origin the targets forward to; `services` are stopped in reverse order."""

    url: str
    kind: str
    services: list[Service] = field(default_factory=list)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


def write_content(www: Path, big_size: int) -> None:
    www.mkdir(exist_ok=True)
    (www / "small.json").write_bytes(SMALL_JSON)
    block = os.urandom(MiB)
    with (www / "big.bin").open("wb") as out:
        for _ in range(big_size // MiB):
            out.write(block)
        out.write(block[: big_size % MiB])


def start_upstream(tmp: Path, big_size: int, use_nginx: bool = True) -> Upstream:
    www = tmp / "www"
    write_content(www, big_size)
    sse_port = free_port()
    aio = start("upstream", pinned(LOAD_CPU, [sys.executable, "-m", "bench.upstream", str(sse_port), str(www)]),
                sse_port, tmp)
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if not use_nginx or nginx is None:
        return Upstream(aio.url, "aiohttp (nginx not found)" if use_nginx else "aiohttp", [aio])
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, www=www, port=port, sse_port=sse_port))
    try:
        ngx = start("nginx", pinned(LOAD_CPU, [nginx, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"),
                                               "-c", str(conf)]), port, tmp)
    except BaseException:
        aio.stop()
        raise
    return Upstream(ngx.url, "nginx", [aio, ngx])


def proxy_env() -> dict[str, str]:
    """Fake static keys (nginx verifies nothing) and no other credential source to probe."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SIGV4_PROXY_"))}
    env.update(
        AWS_ACCESS_KEY_ID="AKIDBENCHMARKFAKEKEY",
        AWS_SECRET_ACCESS_KEY="bench-fake-secret-key-0123456789abcdef",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONPATH=str(REPO),
    )
    return env


def start_proxy(upstream: str, tmp: Path) -> Service:
    port = free_port()
    argv = [sys.executable, "-m", "proxy", "run", "--listen", f"127.0.0.1:{port}", "--upstream", upstream,
            "--sign-host", SIGN_HOST, "--region", "us-east-1", "--service", "execute-api"]
    return start("proxy", pinned(PROXY_CPU, argv), port, tmp, proxy_env())


def start_passthrough(upstream: str, tmp: Path) -> Service:
    port = free_port()
    argv = [sys.executable, "-m", "bench.passthrough", "--listen", f"127.0.0.1:{port}", "--upstream", upstream]
    return start("passthrough", pinned(PROXY_CPU, argv), port, tmp)


def start_relay(upstream: str, tmp: Path) -> Service:
    port = free_port()
    argv = [sys.executable, "-m", "bench.hashing_relay", "--listen", f"127.0.0.1:{port}", "--upstream", upstream]
    return start("relay", pinned(PROXY_CPU, argv), port, tmp)
