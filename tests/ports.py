"""A free TCP port on the loopback interface, for the Ray heads that tests and benchmarks start themselves."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; it may be taken again before use, rarely)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
