"""Free TCP ports for the roles (picked once by the launcher, written into config.json).

A port is picked before the role that binds it starts, so it must not be one the kernel hands out in the
meantime: ports are drawn at random *below* the kernel's ephemeral range (`ip_local_port_range`), from
`LOWEST` up, where connecting sockets, `bind(0)` and srun's I/O listeners never land, and checked free on
every interface. Where fewer than 1000 ports lie between `LOWEST` and that range, they are drawn above it;
after 1000 draws that are all taken, any free port the kernel gives.
(A full-suite run once lost the learner's port to an srun started between the pick and the bind.)
"""

from __future__ import annotations

import random
import socket

from asyncor.configs.schema import Config

LOWEST = 20000  # below: registered services, and Ray's worker ports (10002-19999 by default)


def ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port free on every interface of this host, outside the ephemeral range (on a cluster, set the ports in
    [net] if other nodes may have them taken)."""
    low, high = ephemeral_range()
    lo, hi = (LOWEST, low - 1) if low - 1 - LOWEST >= 1000 else (high + 1, 65535)
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randint(lo, hi)
        if _is_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # everything tried is taken: any free port
        s.bind(("", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (two `free_port()` calls can pick the same one: nothing is bound in between)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def assign_ports(config: Config) -> None:
    """Replace every port left at 0, or set to the same number as a port before it, with a free one (so all
    six differ)."""
    net = config.net
    taken: set[int] = set()
    for name in ("buffer_actor_port", "buffer_learner_port", "sync_port", "store_port", "learner_port",
                 "telemetry_port"):
        port = getattr(net, name)
        while port == 0 or port in taken:
            port = free_port()
        taken.add(port)
        setattr(net, name, port)
