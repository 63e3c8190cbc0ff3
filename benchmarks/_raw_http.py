"""Hand-written HTTP requests for the overload and soak benchmarks: what tritonclient cannot
send (a lying ``Content-Length``, a 10 GB declared body, a held ``Expect: 100-continue``)."""

from __future__ import annotations

import socket

__all__ = ["send", "status"]


def send(port: int, request: bytes) -> socket.socket:
    """Connect to 127.0.0.1:``port`` and send ``request`` as it is."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request)
    return sock


def status(sock: socket.socket) -> int:
    """The status code of the response's first line (0 if the server closed without one)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data else 0
