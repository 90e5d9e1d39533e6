"""Free loopback ports. Tests and ``brixmesh up`` never assume a fixed port is free.

A port handed out here is bound later, often by another process and sometimes many seconds later (a vLLM
engine binds its KV replay socket only after loading its model). Until then nothing reserves it. The
kernel gives ports from its ephemeral range to every ``bind(port 0)`` and to every outgoing connection,
so a port taken from that range can be taken again by anyone in the meantime. Ports are therefore drawn
at random from below that range (above it where there is no room below), where the kernel never assigns
one on its own.
"""

from __future__ import annotations

import random
import socket
from collections import deque
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_DEFAULT_EPHEMERAL = (32768, 60999)
LOWEST_PORT = 10000
MIN_POOL = 4096
DRAW_ATTEMPTS = 200
# Recently handed-out ports are not handed out again while their owner may not have bound them yet.
RECENT_PORTS = 1024

_recent: deque[int] = deque(maxlen=RECENT_PORTS)
_draw = random.SystemRandom()


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's range for automatically assigned ports, inclusive; Linux's default where unreadable."""
    try:
        low, high = (int(field) for field in path.read_text().split())
    except (OSError, ValueError):
        return LINUX_DEFAULT_EPHEMERAL
    return low, high


def unassigned_pool(ephemeral: tuple[int, int]) -> range | None:
    """The ports outside ``ephemeral`` to draw from, or None where neither side has room for a pool."""
    low, high = ephemeral
    if low - LOWEST_PORT >= MIN_POOL:
        return range(LOWEST_PORT, low)
    if 65535 - high >= MIN_POOL:
        return range(high + 1, 65536)
    return None


def _bindable(port: int, host: str) -> bool:
    # No SO_REUSEADDR: a port still in TIME_WAIT is not offered either.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _kernel_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing holds now, that the kernel will not hand to anyone else before the caller binds it."""
    pool = unassigned_pool(ephemeral_range())
    if pool is not None:
        for _ in range(DRAW_ATTEMPTS):
            port = _draw.choice(pool)
            if port not in _recent and _bindable(port, host):
                _recent.append(port)
                return port
    return _kernel_port(host)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
