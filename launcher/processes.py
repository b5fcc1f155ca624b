"""Child processes of the launcher: spawned in their own process group, never orphaned.

Each role runs as `python -m <module> ...` in a new session (its own process
group, so a signal reaches it and everything it started), with
PR_SET_PDEATHSIG so it is terminated even if the launcher itself is killed.
stdout and stderr go to `logs/<name>.out`, appended to (a restarted role's
output follows its predecessor's). A `prefix` runs the role through
another command (the SLURM back-end's `srun ...`, which forwards the remote
task's output; signals to it: launcher/slurm.py). `stop_all` sends SIGTERM
to the group of every role still running, waits up to `grace_s`, then
SIGKILLs every group; it never waits longer than `grace_s + reap_s`.

Who produces, who consumes: the role writes its output straight into its
log file; the launcher reads a `Child`'s `returncode` (a non-blocking poll)
and, on failure, the end of its log (`tail`). What blocks: `spawn` never;
`stop_all` up to `grace_s + reap_s`. Nothing is dropped. On timeout:
`stop_all` returns the roles not reaped within `reap_s` after SIGKILL, for
the caller to report.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: process groups still let stop_all reach everything


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: str
    node: str = "localhost"  # where the role runs, for messages

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)


def log_tail(path: str, lines: int = 15) -> str:
    """The last non-empty lines of a role's log, warnings left out (for failure reports)."""
    try:
        with open(path, errors="replace") as f:
            text = f.read().splitlines()
    except OSError:
        return ""
    keep = [l for l in text if "Warning" not in l and l.strip()]
    return "\n".join(keep[-lines:])


def spawn(name: str, module: str, args: list[str], log_dir: str, env: dict[str, str] | None = None,
          prefix: list[str] | None = None, node: str = "localhost") -> Child:
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, f"{name}.out")
    out = open(log_path, "ab")
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", module, *args], stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
                            env=child_env, cwd=os.getcwd())
    out.close()
    return Child(name, proc, log_path, node)


def _signal_group(child: Child, sig: int) -> None:
    try:
        os.killpg(child.proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all(children: list[Child], grace_s: float = 5.0, reap_s: float = 5.0) -> list[str]:
    """SIGTERM the group of every role still running, SIGKILL every group after `grace_s` (sooner once all
    roles have exited); at most grace_s + reap_s in all.

    Every group gets its SIGKILL even when a role exited by itself (its grandchildren may not have),
    and before any wait, so one process stuck in the kernel cannot keep the others alive. Returns the
    names of roles still not reaped after `reap_s` (never seen in practice; the caller reports them).
    """
    for c in children:
        if c.returncode is None:
            _signal_group(c, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(c.returncode is None for c in children):
        time.sleep(0.05)
    for c in children:
        _signal_group(c, signal.SIGKILL)
    deadline = time.monotonic() + reap_s
    stuck = []
    for c in children:
        try:
            c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stuck.append(f"{c.name} (pid {c.proc.pid})")
    return stuck
