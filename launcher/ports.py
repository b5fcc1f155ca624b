"""Free TCP ports for the roles (picked once by the launcher, written into config.json)."""

from __future__ import annotations

import socket

from configs.schema import Config


def free_port() -> int:
    """A port free on every interface of this host (on a cluster, set the ports in [net] if other nodes
    may have them taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def assign_ports(config: Config) -> None:
    """Replace every port left at 0 with a free one (distinct from each other)."""
    net = config.net
    taken: set[int] = set()
    for name in ("buffer_actor_port", "buffer_learner_port", "sync_port", "store_port", "learner_port",
                 "telemetry_port"):
        port = getattr(net, name)
        while port == 0 or port in taken:
            port = free_port()
        taken.add(port)
        setattr(net, name, port)
