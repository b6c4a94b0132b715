"""Measure server-sent event latency: arrival time minus the send time each event carries.

Reads the stream over a plain socket (no HTTP client overhead) and prints one JSON line with the
latency of every event in microseconds. The upstream stamps events with CLOCK_MONOTONIC, which
every process on the host shares.

    python -m bench.sse_client HOST PORT PATH
"""

from __future__ import annotations

import json
import socket
import sys
import time


def measure(host: str, port: int, path: str, timeout: float = 30.0) -> list[float]:
    latencies: list[float] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        pending = b""
        while chunk := sock.recv(65536):
            arrived = time.monotonic_ns()
            pending += chunk
            # Chunked framing lines never start with "data: ", so a line scan finds the events.
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.startswith(b"data: "):
                    latencies.append((arrived - int(line[6:].strip())) / 1000)
    return latencies


def main() -> None:
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    print(json.dumps(measure(host, port, path)))


if __name__ == "__main__":
    main()
