"""Run untrusted, model-written Python in a throw-away sandbox process.

Each run is one child process with:
* its own session / process group, killed as a whole at the end (and, when
  running as root, every process of its private uid is killed too, which
  catches anything that escaped the group);
* a private unprivileged uid when the host runs as root (so it cannot write
  the host's files, and RLIMIT_NPROC caps its processes: no fork bomb);
* no network: a new, empty network namespace where the OS allows it (root);
  the harness also disables `socket` inside Python as a second fence;
* rlimits: address space (memory), CPU seconds, file size (which also caps
  output: stdout and stderr go to files), open files, processes;
* a fresh temporary working directory, deleted afterwards;
* a wall-clock deadline; the child also dies if its parent dies (PDEATHSIG).
Linux only.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
SANDBOX_UID_BASE = 61000  # private uids: base + slot (one per concurrent worker)


@dataclass(frozen=True)
class Limits:
    wall_s: float = 6.0  # per run
    cpu_s: int = 5
    memory_bytes: int = 1 << 30
    output_bytes: int = 1 << 20  # per stream; also the largest file it may write
    processes: int = 16
    open_files: int = 64


@dataclass
class RunResult:
    returncode: int | None  # None when killed for time
    stdout: bytes
    stderr: bytes
    timed_out: bool
    output_exceeded: bool
    files: dict[str, str] = field(default_factory=dict)  # the `collect`ed files the program left behind

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_exceeded


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _child_setup(limits: Limits, uid: int | None):
    """Runs in the child between fork and exec: isolate, drop privileges, set limits."""
    def setup():
        os.setsid()
        libc = _libc()
        if uid is not None:
            libc.unshare(CLONE_NEWNET)  # best effort: fails without privileges, the harness blocks sockets too
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        # After the uid change (which clears it): die with the parent.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if uid is not None:  # RLIMIT_NPROC counts per uid and is ignored for root: only meaningful here
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    return setup


def kill_uid(uid: int) -> None:
    """SIGKILL every process owned by `uid` (the sandbox's private uid)."""
    for _ in range(3):
        found = False
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    os.kill(int(pid), signal.SIGKILL)
                    found = True
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
        if not found:
            return
        time.sleep(0.01)


class Sandbox:
    """A reusable sandbox slot: `run()` executes one command in a fresh directory under the slot's uid."""

    def __init__(self, slot: int = 0, limits: Limits = Limits()):
        self.limits = limits
        self.uid = SANDBOX_UID_BASE + slot if os.geteuid() == 0 else None

    def run(self, argv: list[str], files: dict[str, str], stdin: bytes = b"", collect: tuple[str, ...] = ()) -> RunResult:
        """Write `files` into a fresh directory, run `argv` there, read back `collect`, clean up everything."""
        workdir = tempfile.mkdtemp(prefix="asyncor-sandbox-")
        try:
            for name, text in files.items():
                with open(os.path.join(workdir, name), "w") as f:
                    f.write(text)
            out_path, err_path = os.path.join(workdir, ".stdout"), os.path.join(workdir, ".stderr")
            if self.uid is not None:
                os.chown(workdir, self.uid, self.uid)
                for name in os.listdir(workdir):
                    os.chown(os.path.join(workdir, name), self.uid, self.uid)
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                if self.uid is not None:
                    os.fchown(out.fileno(), self.uid, self.uid)
                    os.fchown(err.fileno(), self.uid, self.uid)
                env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
                       "PYTHONDONTWRITEBYTECODE": "1"}
                proc = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.PIPE, stdout=out, stderr=err, env=env,
                                        preexec_fn=_child_setup(self.limits, self.uid), close_fds=True)
                timed_out = False
                try:
                    proc.communicate(stdin, timeout=self.limits.wall_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                except (BrokenPipeError, OSError):
                    pass  # the child exited without reading its input
                finally:
                    self._kill_all(proc)
            stdout, stderr = self._read(out_path), self._read(err_path)
            exceeded = len(stdout) >= self.limits.output_bytes or len(stderr) >= self.limits.output_bytes or (
                proc.returncode == -signal.SIGXFSZ)
            left = {name: self._read(os.path.join(workdir, name)).decode("utf-8", errors="replace")
                    for name in collect if os.path.isfile(os.path.join(workdir, name))}
            return RunResult(None if timed_out else proc.returncode, stdout, stderr, timed_out, exceeded, left)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _kill_all(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.uid is not None:
            kill_uid(self.uid)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def _read(self, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read(self.limits.output_bytes)
        except OSError:
            return b""
