"""One host: every role is a child process of the launcher (launcher/processes.py)."""

from __future__ import annotations

from asyncor.launcher.backend import Node, RoleSpec
from asyncor.launcher.placement import visible_gpus
from asyncor.launcher.processes import Child, spawn, stop_all


class LocalBackend:
    kind = "local"

    def __init__(self, host: str):
        self.nodes = [Node(host, "localhost", tuple(visible_gpus()))]
        self.launcher_address = host

    def start(self, spec: RoleSpec, log_dir: str) -> Child:
        return spawn(spec.name, spec.module, spec.args, log_dir, spec.env)

    def poll(self, handles: list[Child]) -> None:
        pass  # children write their logs straight into the run directory

    def stop(self, handles: list[Child], grace_s: float, reap_s: float) -> list[str]:
        return stop_all(handles, grace_s, reap_s)

    def ended(self) -> None:
        return None  # nothing outside the launcher stops a local run

    def close(self) -> None:
        pass
