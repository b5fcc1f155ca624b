"""Run untrusted, model-written Python in a throw-away sandbox (docs/verifiers.md, "The sandbox").

As root, with `unshare` and namespaces the kernel allows (`jail_available`: the verifier workers of a run,
CI), each run is a jail (tasks/sandbox_jail.py):
* new pid, mount, network, IPC and UTS namespaces (`unshare`). When the run ends its first process dies, and
  the kernel kills every process left in the namespace: forks, daemons, set-uid helpers;
* a private root: a size-capped tmpfs (`disk_bytes` for every file written, /tmp included) holding read-only
  /usr and libraries, four devices, an empty /etc and /tmp, and the run's files in /work. The host's files (datasets,
  expected outputs, homes), /proc (other command lines), /dev/shm and host Unix sockets are not in it, and
  the tmpfs vanishes with the namespace;
* the slot's private unprivileged uid, no supplementary groups, no_new_privs (a set-uid binary gains
  nothing), rlimits (address space per process, CPU, file size, open files, processes);
* a memory and process cgroup per run when cgroups can be written: `memory_bytes` and `processes` hold for
  all of the run's processes together, not per process;
* a wall-clock deadline; everything is killed through the cgroup and the namespace.
Nothing of a run stays on the host: stdin and the run's files arrive through descriptors, stdout and
stderr go to unlinked temporary files the worker reads through its own descriptors (never by path: the
program cannot choose what the worker reads), and results come back on a pipe (`channel`).

Without the jail (not root, or no namespaces): far fewer limits. The run keeps the worker's own uid (root,
if root), gets its own session and process group (killed as a group at the deadline), a parent-death
signal on its first process, rlimits on address space per process, CPU, file size and open files (no
process count, no cgroup, no disk cap), a fresh directory and the harness-level socket block. The attack
classes of docs/verifiers.md stay open there; run verifiers as root.

Concurrency. Producer: the one verifier worker process (tasks/verifier_pool.py) that owns the slot; it
runs one program at a time. Consumer: that program. Blocking: `run` blocks its caller for at most
`wall_s`, plus the kill and up to 5 s waiting for the process to go; `followup` is written by a helper
thread, so a program that never reads it cannot block the worker. Dropped: output past `output_bytes`
per stream and on the result channel (cut, and the run counts as `output_exceeded`). Timeout: at
`wall_s` the run is killed (jailed: every process of it; without the jail: its process group); the
result has `timed_out` and no return code.
"""

from __future__ import annotations

import ctypes
import glob
import itertools
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

PR_SET_PDEATHSIG = 1
SANDBOX_UID_BASE = 61000  # private uids: base + slot (one per concurrent worker)
JAIL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_jail.py")
CGROUP_ROOT = "/sys/fs/cgroup"
_runs = itertools.count()


@dataclass(frozen=True)
class Limits:
    wall_s: float = 6.0  # per run
    cpu_s: int = 5
    memory_bytes: int = 1 << 30  # every process of the run together (cgroup); also each one's address space
    output_bytes: int = 1 << 20  # per stream; also the largest file it may write and the result channel
    processes: int = 16
    open_files: int = 64
    disk_bytes: int = 16 << 20  # every file the run writes (its tmpfs), in the jail


@dataclass
class RunResult:
    returncode: int | None  # None when killed for time
    stdout: bytes
    stderr: bytes
    timed_out: bool
    output_exceeded: bool
    channel: bytes = b""  # what the program's side wrote to the result descriptor (ASYNCOR_RESULT_FD)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_exceeded


@lru_cache(maxsize=None)
def jail_available() -> bool:
    """Root, `unshare`, and namespaces the kernel lets us create."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--net", "--ipc", "--uts", "true"],
                           capture_output=True, timeout=10)
    return probe.returncode == 0


class RunCgroup:
    """A memory + pids cgroup (v1 or v2) for one run, or nothing where cgroups are read-only."""

    def __init__(self, name: str, limits: Limits):
        self.dirs: list[str] = []
        unified = os.path.join(CGROUP_ROOT, "cgroup.controllers")
        try:
            if os.path.exists(unified):  # cgroup v2
                d = os.path.join(CGROUP_ROOT, name)
                os.mkdir(d)
                self.dirs.append(d)
                self._write(d, "memory.max", limits.memory_bytes)
                self._write(d, "memory.swap.max", 0, required=False)
                self._write(d, "pids.max", limits.processes)
            else:
                for controller, settings in (("memory", (("memory.limit_in_bytes", limits.memory_bytes),
                                                          ("memory.memsw.limit_in_bytes", limits.memory_bytes))),
                                             ("pids", (("pids.max", limits.processes),))):
                    d = os.path.join(CGROUP_ROOT, controller, name)
                    os.mkdir(d)
                    self.dirs.append(d)
                    for key, value in settings:
                        self._write(d, key, value, required=key != "memory.memsw.limit_in_bytes")
        except OSError:
            self.remove()
            self.dirs = []

    @staticmethod
    def _write(d: str, key: str, value: int, required: bool = True) -> None:
        try:
            with open(os.path.join(d, key), "w") as f:
                f.write(str(value))
        except OSError:
            if required:
                raise

    def join(self) -> None:
        """Move the calling process in (runs in the child before exec)."""
        for d in self.dirs:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    def pids(self) -> list[int]:
        out = set()
        for d in self.dirs:
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    out |= {int(p) for p in f.read().split()}
            except OSError:
                pass
        return sorted(out)

    def kill_all(self) -> None:
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        for d in self.dirs:
            try:
                os.rmdir(d)
            except OSError:
                pass


def remove_stale_cgroups() -> None:
    """Cgroups of runs whose worker was killed mid-run (their processes are gone: the namespace died)."""
    for d in glob.glob(os.path.join(CGROUP_ROOT, "*", "asyncor-sandbox-*")) + \
            glob.glob(os.path.join(CGROUP_ROOT, "asyncor-sandbox-*")):
        try:
            pid = int(os.path.basename(d).split("-")[2])
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.rmdir(d)
            except OSError:
                pass
        except (ValueError, IndexError, PermissionError):
            continue


def _libc():
    return ctypes.CDLL(None, use_errno=True)


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


def _rlimits(limits: Limits, per_uid: bool) -> dict[str, int]:
    out = {"RLIMIT_AS": limits.memory_bytes, "RLIMIT_CPU": limits.cpu_s, "RLIMIT_FSIZE": limits.output_bytes,
           "RLIMIT_NOFILE": limits.open_files, "RLIMIT_CORE": 0}
    if per_uid:  # RLIMIT_NPROC counts per uid and is ignored for root
        out["RLIMIT_NPROC"] = limits.processes
    return out


def _plain_child_setup(limits: Limits):
    """Not root: own session, limits, die with the parent."""
    def setup():
        os.setsid()
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        for name, value in _rlimits(limits, per_uid=False).items():
            resource.setrlimit(getattr(resource, name), (value, value if name != "RLIMIT_CPU" else value + 1))
    return setup


def _jail_child_setup(cgroup: RunCgroup):
    """Root, before exec of `unshare`: own session, the run's cgroup, die with the worker."""
    def setup():
        os.setsid()
        cgroup.join()
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    return setup


class Sandbox:
    """A reusable sandbox slot: `run()` executes one command in a fresh jail under the slot's uid (without the
    jail: in a fresh directory under the caller's uid)."""

    def __init__(self, slot: int = 0, limits: Limits = Limits()):
        self.limits = limits
        self.slot = slot
        self.jailed = jail_available()
        self.uid = SANDBOX_UID_BASE + slot if self.jailed else None
        if self.jailed:
            remove_stale_cgroups()

    def run(self, argv: list[str], files: dict[str, str], stdin: bytes = b"",
            followup: bytes | None = None) -> RunResult:
        """Run `argv` in /work holding `files`, with `stdin`. The program's side may write results to the
        descriptor named by ASYNCOR_RESULT_FD (returned as `channel`); with `followup`, its first byte there
        says "ready" and `followup` is then written to ASYNCOR_FOLLOWUP_FD and closed."""
        limits = self.limits
        result_r, result_w = os.pipe()
        follow_r, follow_w = os.pipe()
        spool = [tempfile.TemporaryFile() for _ in range(4)]  # unlinked: nothing left on the host, ever
        stdin_f, out_f, err_f, files_f = spool
        stdin_f.write(stdin)
        files_f.write(json.dumps(files).encode())
        for f in (stdin_f, files_f):
            f.flush()
            f.seek(0)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               "ASYNCOR_RESULT_FD": str(result_w), "ASYNCOR_FOLLOWUP_FD": str(follow_r)}
        cgroup = workdir = None
        try:
            if self.jailed:
                cgroup = RunCgroup(f"asyncor-sandbox-{os.getpid()}-{self.slot}-{next(_runs)}", limits)
                settings = {"uid": self.uid, "files_fd": files_f.fileno(), "disk_bytes": limits.disk_bytes,
                            "argv": argv, "env": {**env, "HOME": "/work", "TMPDIR": "/tmp"},
                            "limits": _rlimits(limits, per_uid=True)}
                command = ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--net", "--ipc", "--uts", "--",
                           sys_python(), "-I", "-S", JAIL]
                proc = subprocess.Popen(command, stdin=stdin_f, stdout=out_f, stderr=err_f,
                                        env={"ASYNCOR_SANDBOX": json.dumps(settings)},
                                        pass_fds=(result_w, follow_r, files_f.fileno()),
                                        preexec_fn=_jail_child_setup(cgroup), close_fds=True)
            else:
                workdir = tempfile.mkdtemp(prefix="asyncor-sandbox-")
                for name, text in files.items():
                    with open(os.path.join(workdir, name), "w") as f:
                        f.write(text)
                proc = subprocess.Popen(argv, cwd=workdir, stdin=stdin_f, stdout=out_f, stderr=err_f,
                                        env={**env, "HOME": workdir, "TMPDIR": workdir},
                                        pass_fds=(result_w, follow_r), preexec_fn=_plain_child_setup(limits),
                                        close_fds=True)
            os.close(result_w)
            os.close(follow_r)
            result_w = follow_r = -1
            channel, timed_out = self._watch(proc, result_r, follow_w, followup)
            follow_w = -1
            self._kill_all(proc, cgroup)
            stdout, stderr = self._read(out_f), self._read(err_f)
            exceeded = len(stdout) >= limits.output_bytes or len(stderr) >= limits.output_bytes or (
                proc.returncode == -signal.SIGXFSZ) or len(channel) >= limits.output_bytes
            return RunResult(None if timed_out else proc.returncode, stdout, stderr, timed_out, exceeded, channel)
        finally:
            for fd in (result_r, result_w, follow_r, follow_w):
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            for f in spool:
                f.close()
            if cgroup is not None:
                cgroup.kill_all()
                cgroup.remove()
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)

    def _watch(self, proc: subprocess.Popen, result_r: int, follow_w: int, followup: bytes | None):
        """Collect the result channel until the process ends or the deadline passes; hand over `followup`
        once the program's side says it is ready. Returns (channel bytes, timed out)."""
        channel = bytearray()
        deadline = time.monotonic() + self.limits.wall_s
        sent = followup is None
        if sent:
            os.close(follow_w)
        open_ = True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                if not sent:
                    os.close(follow_w)
                return bytes(channel), proc.poll() is None
            if open_:
                ready, _, _ = select.select([result_r], [], [], min(left, 0.05))
                if ready:
                    chunk = os.read(result_r, 65536)
                    if not chunk:
                        open_ = False
                    elif len(channel) < self.limits.output_bytes:
                        channel += chunk[: self.limits.output_bytes - len(channel)]
                if not sent and channel:
                    threading.Thread(target=_write_all, args=(follow_w, followup), daemon=True).start()
                    sent = True
            elif proc.poll() is None:
                time.sleep(min(left, 0.02))
            if not open_ and proc.poll() is not None:
                if not sent:
                    os.close(follow_w)
                return bytes(channel), False

    def _kill_all(self, proc: subprocess.Popen, cgroup: RunCgroup | None) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # unshare (its child, the namespace's init, gets SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if cgroup is not None:
            cgroup.kill_all()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def _read(self, f) -> bytes:
        f.seek(0)
        return f.read(self.limits.output_bytes)


def _write_all(fd: int, data: bytes) -> None:
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError:
        pass  # the program stopped reading (or exited): it gets EOF / nothing more


def sys_python() -> str:
    """The system interpreter that sets the jail up (the standard library only)."""
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
