"""The launch seam: where roles run. `launch.py run --cluster local|slurm|ray` picks a back-end; the
launcher (launcher/run.py) is the same for all of them: plan -> start roles -> watch -> stop.

A back-end knows the nodes it has (`nodes`: the address other roles reach each one at, a label for
messages, its GPU device ids) and the address roles reach the launcher at; it starts a role on a node
(`start`, returning a handle with `name`, `node`, `log_path`, `returncode` and `tail()`), refreshes the
handles and gathers their output into `runs/<name>/logs/` (`poll`), and stops them within a bounded time
(`stop`), and says when the cluster itself ended the run (`ended`). The roles themselves are the same
processes on every back-end.

  launcher/local.py       child processes of the launcher (one host)
  launcher/slurm.py       one `srun` job step per role inside a SLURM allocation
  launcher/ray_cluster.py one Ray actor per role, managing the role's process on its node
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Node:
    address: str  # how the other roles reach this node (an IP or a resolvable host name)
    label: str  # for messages and log lines
    device_ids: tuple[str, ...] = ()  # GPU index i of the plan -> this CUDA device id


@dataclass(frozen=True)
class RoleSpec:
    name: str  # buffer, learner, learner1, actor0, prepare, eval_before, ...
    module: str  # run as `python -m module *args`
    args: list[str]
    node: int  # index into the back-end's nodes (the plan's node)
    env: dict[str, str] = field(default_factory=dict)


class Handle(Protocol):
    name: str
    node: str
    log_path: str

    @property
    def returncode(self) -> int | None: ...

    def tail(self, lines: int = 15) -> str: ...


class Backend(Protocol):
    kind: str
    nodes: list[Node]
    launcher_address: str  # where roles reach the launcher's telemetry collector

    def start(self, spec: RoleSpec, log_dir: str) -> Handle: ...

    def poll(self, handles: list[Handle]) -> None: ...

    def stop(self, handles: list[Handle], grace_s: float, reap_s: float) -> list[str]: ...

    def ended(self) -> str | None:
        """Why the cluster took the roles away (a SLURM job that ended), or None; asked when a role fails, so
        the report names the cause rather than the first role that died of it."""
        ...

    def close(self) -> None: ...
