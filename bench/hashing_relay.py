"""A reference for what this machine allows: the unavoidable work of a signing proxy, done plainly.

One thread per client connection with blocking sockets and 1 MiB buffers, no parsing beyond
finding the end of a head and its Content-Length, no signing, no event loop. A request body is
received into a reused buffer and hashed (SHA-256) as it arrives, then sent on: what a SigV4
payload hash demands, since the header carrying it goes out before the body. Responses are relayed
as they arrive. The bench measures this relay beside the proxy: a target that this relay misses by
far is not one a signing proxy meets by trimming its own code.

Serves only what the bench sends: requests and responses framed by Content-Length.

    python -m bench.hashing_relay --listen 127.0.0.1:PORT --upstream http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import threading

BUFFER = 1024 * 1024


def read_head(sock: socket.socket, data: bytes = b"") -> tuple[bytes, bytes] | None:
    """A message head and what came after it (`data`: bytes already read), or None when the peer
    closed between messages."""
    while (end := data.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data[: end + 4], data[end + 4 :]


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def hash_then_send(src: socket.socket, dst: socket.socket, length: int, first: bytes, buffer: memoryview) -> None:
    """Receive the whole body, hashing it as it comes, then send it on."""
    digest = hashlib.sha256(first)
    buffer[: len(first)] = first
    got = len(first)
    while got < length:
        n = src.recv_into(buffer[got:length], min(BUFFER, length - got))
        if not n:
            raise ConnectionError("client closed mid-body")
        digest.update(buffer[got : got + n])
        got += n
    digest.hexdigest()
    dst.sendall(buffer[:length])


def relay(src: socket.socket, dst: socket.socket, length: int, first: bytes, buffer: memoryview) -> None:
    """Send a body on as it arrives."""
    dst.sendall(first)
    left = length - len(first)
    while left > 0:
        n = src.recv_into(buffer, min(BUFFER, left))
        if not n:
            raise ConnectionError("upstream closed mid-body")
        dst.sendall(buffer[:n])
        left -= n


def serve(client: socket.socket, upstream: tuple[str, int]) -> None:
    body = memoryview(bytearray(16 * BUFFER))  # the bench's POST bodies are 5 MiB
    chunk = memoryview(bytearray(BUFFER))
    try:
        with client, socket.create_connection(upstream) as origin:
            while (request := read_head(client)) is not None:
                head, rest = request
                origin.sendall(head)
                hash_then_send(client, origin, content_length(head), rest, body)
                answer = read_head(origin)
                while answer is not None and answer[0][9:10] == b"1":  # 100 Continue: the answer follows
                    answer = read_head(origin, answer[1])
                if answer is None:
                    return
                client.sendall(answer[0])
                relay(origin, client, content_length(answer[0]), answer[1], chunk)
    except OSError:
        pass  # a client that went away ends its thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    up_host, _, up_port = args.upstream.removeprefix("http://").rpartition(":")
    server = socket.create_server((host, int(port)), backlog=128)
    while True:
        client, _ = server.accept()
        threading.Thread(target=serve, args=(client, (up_host, int(up_port))), daemon=True).start()


if __name__ == "__main__":
    main()
