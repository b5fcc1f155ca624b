"""Run untrusted, model-written Python in a throw-away sandbox (docs/verifiers.md, "The sandbox").

As root, with `unshare` and namespaces the kernel allows (`jail_available`: the verifier workers of a run,
CI), each run is a jail (tasks/sandbox_jail.py):
* new pid, mount, network, IPC and UTS namespaces (`unshare`). When the run ends its first process dies, and
  the kernel kills every process left in the namespace: forks, daemons, set-uid helpers;
* a private root: a size-capped tmpfs (`disk_bytes` for every file written, /tmp included) holding read-only
  /usr and libraries, four devices, an empty /etc and /tmp, and the run's files in /work. The host's files (datasets,
  expected outputs, homes), /proc (other command lines), /dev/shm and host Unix sockets are not in it, and
  the tmpfs vanishes with the namespace;
* a private unprivileged uid leased for the life of the `Sandbox` (`UidLease`: no two sandboxes on the host
  share one, whichever pool they belong to), no supplementary groups, no_new_privs (a set-uid binary gains
  nothing), rlimits (address space per process, CPU, file size, open files);
* a memory and process cgroup per run when cgroups can be written: `memory_bytes` and `processes` hold for
  all of the run's processes together, not per process (where they cannot: RLIMIT_NPROC on the leased uid,
  which no other sandbox uses, so it too counts this run's processes only);
* a seccomp filter (`seccomp_filter`, built with libseccomp, installed last, just before the program is
  executed): the kernel's key store, modules, mounts, namespaces, ptrace and other processes' memory, bpf,
  perf, io_uring, kexec, reboot, swap, quotas, file handles and personality are refused with EPERM;
* a wall-clock deadline; everything is killed through the cgroup and the namespace.
Nothing of a run touches the host's disk: the run's files arrive through a pipe, stdin, stdout and stderr
are pipes (an fallocate or ftruncate through them fails; the worker reads at most `output_bytes` of each and
stops the run past that), and results come back on a pipe (`channel`).

Without the jail (not root, or no namespaces): far fewer limits. The run keeps the worker's own uid (root,
if root), gets its own session and process group (killed as a group at the deadline), a parent-death
signal on its first process, rlimits on address space per process, CPU, file size and open files (no
process count, no cgroup, no disk cap, no seccomp filter), a fresh directory and the harness-level socket
block. The attack classes of docs/verifiers.md stay open there; run verifiers as root.

Concurrency. Producer: the one verifier worker process (tasks/verifier_pool.py) that owns the slot; it
runs one program at a time. Consumer: that program. Blocking: `run` blocks its caller for at most
`wall_s`, plus the kill and up to 5 s waiting for the process to go; stdin, the run's files and `followup`
are written by helper threads, so a program that never reads them cannot block the worker. Dropped: a
stream (stdout, stderr, the result channel) past `output_bytes` ends the run at once: the first
`output_bytes` are kept and the run counts as `output_exceeded`. Timeout: at `wall_s` the run is killed
(jailed: every process of it; without the jail: its process group); the result has `timed_out` and no
return code.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import itertools
import json
import os
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from functools import lru_cache

PR_SET_PDEATHSIG = 1
SANDBOX_UID_BASE = 61000  # private uids: SANDBOX_UID_BASE + lease number
SANDBOX_UIDS = 184  # 61000-61183: below systemd's dynamic users (61184-65519)
JAIL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_jail.py")
CGROUP_ROOT = "/sys/fs/cgroup"
EXIT_GRACE_S = 0.2  # without the jail: how long a stream may stay open after the run's first process exited
_runs = itertools.count()

# System calls the jailed program is refused (EPERM), after Docker's default seccomp profile: the kernel's key
# store (shared by every process of a uid, and holding the keys of the session the pool was started in), kernel
# modules, mounts and namespaces, tracing and other processes' memory, bpf, perf events, io_uring, kexec, reboot,
# swap, clocks, quotas, file handles, personality, and obsolete calls. Names unknown on the host's architecture are
# skipped. Calls of a foreign architecture (32-bit x86 on x86-64) kill the process: libseccomp's default.
DENIED_SYSCALLS = (
    "add_key", "request_key", "keyctl",
    "init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms",
    "mount", "umount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr",
    "unshare", "setns",
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "syslog", "acct",
    "clock_settime", "clock_adjtime", "settimeofday", "stime",
    "quotactl", "quotactl_fd", "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "fanotify_init",
    "personality", "mbind", "set_mempolicy", "get_mempolicy", "move_pages", "migrate_pages",
    "ioperm", "iopl", "vm86", "vm86old", "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "vhangup",
)
# clone() with any of these flags (a new namespace) is refused; clone3() reports ENOSYS, so that the C library
# falls back to clone(), whose flags the filter can read (clone3 passes them in memory).
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000,
                         0x00000080)  # NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME


@dataclass(frozen=True)
class Limits:
    wall_s: float = 6.0  # per run
    cpu_s: int = 5
    memory_bytes: int = 1 << 30  # every process of the run together (cgroup); also each one's address space
    output_bytes: int = 1 << 20  # per stream (stdout, stderr, result channel); also the largest file it may write
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


@lru_cache(maxsize=None)
def seccomp_filter() -> bytes:
    """The jail's seccomp filter as a BPF program for this machine's architecture, compiled by libseccomp
    (through pyseccomp); tasks/sandbox_jail.py installs it. Raises RuntimeError saying what to install where
    libseccomp or pyseccomp is missing."""
    try:
        import pyseccomp as seccomp
    except (ImportError, RuntimeError, OSError) as exc:  # pyseccomp raises RuntimeError without libseccomp
        raise RuntimeError("the sandbox jail needs seccomp: the libseccomp library (Debian/Ubuntu: apt install "
                           "libseccomp2) and the Python package pyseccomp (pip install pyseccomp); "
                           f"importing pyseccomp failed: {exc!r}") from exc
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    arch = seccomp.system_arch()
    for name in DENIED_SYSCALLS:
        if seccomp.resolve_syscall(arch, name) >= 0:  # negative: not a system call of this architecture
            rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
    if seccomp.resolve_syscall(arch, "clone3") >= 0:
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    flags_arg = 1 if arch in (seccomp.Arch.S390, seccomp.Arch.S390X) else 0  # clone's argument order on s390
    for flag in CLONE_NAMESPACE_FLAGS:
        rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(flags_arg, seccomp.MASKED_EQ, flag, flag))
    with tempfile.TemporaryFile() as out:
        rules.export_bpf(out)
        out.seek(0)
        return out.read()


def check_jail() -> None:
    """Where the jail will be used (`jail_available`), fail now if something it needs is missing (the seccomp
    filter's library), with a RuntimeError that says what to install; never fall back to a weaker jail."""
    if jail_available():
        seccomp_filter()


def _lease_directory() -> str:
    """The host-wide directory of uid leases: /run/asyncor-sandbox-uids (the temporary directory's where /run
    cannot be written), root's, mode 0700, never a link."""
    for base in ("/run", tempfile.gettempdir()):
        path = os.path.join(base, "asyncor-sandbox-uids")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError:
            continue  # no /run, or read-only
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
            raise RuntimeError(f"sandbox uid leases: {path} must be a directory owned by root with mode 0700 "
                               f"(found mode {oct(info.st_mode)}, owner {info.st_uid}); remove it and retry")
        return path
    raise RuntimeError("sandbox uid leases: neither /run nor the temporary directory can be written")


class UidLease:
    """A private uid for one jailed Sandbox, unique on the host while the lease is held: an flock on a file in
    a root-only directory, released when the Sandbox is closed or collected, or when its process dies. Two
    pools (actors, evaluations, runs) on one host therefore never share a sandbox uid, so nothing that the
    kernel counts or keeps per uid (RLIMIT_NPROC, the user keyring) is shared between them."""

    def __init__(self):
        directory = _lease_directory()
        for n in range(SANDBOX_UIDS):
            fd = os.open(os.path.join(directory, f"{n}.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.uid = SANDBOX_UID_BASE + n
            self._release = weakref.finalize(self, os.close, fd)
            return
        raise RuntimeError(f"all {SANDBOX_UIDS} sandbox uids ({SANDBOX_UID_BASE}-{SANDBOX_UID_BASE + SANDBOX_UIDS - 1})"
                           f" are leased on this host (lock files in {directory}): too many verifier workers")

    def release(self) -> None:
        self._release()


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

    @property
    def limits_processes(self) -> bool:
        """Whether this cgroup holds the run's process count (it exists only with its pids limit set)."""
        return bool(self.dirs)

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


class _Pipes:
    """The run's pipes. `child` ends go to the program (closed here once it started); `worker` ends stay here."""

    def __init__(self, jailed: bool):
        names = ["stdin", "stdout", "stderr", "result", "followup"] + (["setup"] if jailed else [])
        self.ends: dict[str, tuple[int, int]] = {name: os.pipe() for name in names}  # (read, write)
        to_child = {"stdin", "followup", "setup"}  # the program reads these; it writes the others
        self.child = {name: r if name in to_child else w for name, (r, w) in self.ends.items()}
        self.worker = {name: w if name in to_child else r for name, (r, w) in self.ends.items()}

    def close_child_ends(self) -> None:
        for name in list(self.child):
            os.close(self.child.pop(name))

    def hand_over(self, name: str, data: bytes) -> None:
        """Write `data` to the worker's end of `name` from a helper thread, then close it (EOF for the program)."""
        fd = self.worker.pop(name)
        if not data:
            os.close(fd)
            return
        threading.Thread(target=_write_all, args=(fd, data), daemon=True, name=f"sandbox-{name}").start()

    def close(self) -> None:
        for fd in list(self.child.values()) + list(self.worker.values()):
            try:
                os.close(fd)
            except OSError:
                pass
        self.child, self.worker = {}, {}


class Sandbox:
    """A reusable sandbox slot: `run()` executes one command in a fresh jail under the sandbox's leased uid
    (without the jail: in a fresh directory under the caller's uid). `jail`: None uses the jail where it is
    available, False never does (the plain fallback, e.g. to compare costs), True requires it."""

    def __init__(self, slot: int = 0, limits: Limits = Limits(), jail: bool | None = None):
        self.limits = limits
        self.slot = slot
        self.jailed = jail_available() if jail is None else jail
        if self.jailed and not jail_available():
            raise RuntimeError("Sandbox(jail=True): the jail needs root, `unshare` and Linux namespaces")
        self._filter = seccomp_filter() if self.jailed else b""  # fails here, naming what is missing
        self._lease = UidLease() if self.jailed else None
        self.uid = self._lease.uid if self._lease else None
        if self.jailed:
            remove_stale_cgroups()

    def close(self) -> None:
        """Give the uid lease back (also done when the Sandbox is collected or its process ends)."""
        if self._lease is not None:
            self._lease.release()

    def run(self, argv: list[str], files: dict[str, str], stdin: bytes = b"",
            followup: bytes | None = None) -> RunResult:
        """Run `argv` in /work holding `files`, with `stdin`. The program's side may write results to the
        descriptor named by ASYNCOR_RESULT_FD (returned as `channel`); with `followup`, its first byte there
        says "ready" and `followup` is then written to ASYNCOR_FOLLOWUP_FD and closed."""
        pipes = _Pipes(self.jailed)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               "ASYNCOR_RESULT_FD": str(pipes.child["result"]), "ASYNCOR_FOLLOWUP_FD": str(pipes.child["followup"])}
        cgroup = workdir = None
        try:
            if self.jailed:
                cgroup = RunCgroup(f"asyncor-sandbox-{os.getpid()}-{self.slot}-{next(_runs)}", self.limits)
                proc = self._start_jailed(argv, env, pipes, cgroup)
                pipes.hand_over("setup", json.dumps({"files": files, "seccomp": self._filter.hex()}).encode())
            else:
                workdir = tempfile.mkdtemp(prefix="asyncor-sandbox-")
                proc = self._start_plain(argv, env, pipes, files, workdir)
            pipes.close_child_ends()
            pipes.hand_over("stdin", stdin)
            streams, timed_out, exceeded = self._collect(proc, pipes, followup)
            self._kill_all(proc, cgroup)
            exceeded = exceeded or proc.returncode == -signal.SIGXFSZ  # a file in /work or /tmp past the limit
            return RunResult(None if timed_out else proc.returncode, streams["stdout"], streams["stderr"],
                             timed_out, exceeded, streams["result"])
        finally:
            pipes.close()
            if cgroup is not None:
                cgroup.kill_all()
                cgroup.remove()
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)

    def _start_jailed(self, argv: list[str], env: dict, pipes: _Pipes, cgroup: RunCgroup) -> subprocess.Popen:
        """`unshare` into new namespaces, then tasks/sandbox_jail.py builds the jail and execs `argv`. The
        process count is the cgroup's where it holds one, else RLIMIT_NPROC on the leased uid."""
        settings = {"uid": self.uid, "setup_fd": pipes.child["setup"], "disk_bytes": self.limits.disk_bytes,
                    "argv": argv, "env": {**env, "HOME": "/work", "TMPDIR": "/tmp"},
                    "limits": _rlimits(self.limits, per_uid=not cgroup.limits_processes)}
        command = ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--net", "--ipc", "--uts", "--",
                   sys_python(), "-I", "-S", JAIL]
        return subprocess.Popen(command, stdin=pipes.child["stdin"], stdout=pipes.child["stdout"],
                                stderr=pipes.child["stderr"], env={"ASYNCOR_SANDBOX": json.dumps(settings)},
                                pass_fds=(pipes.child["result"], pipes.child["followup"], pipes.child["setup"]),
                                preexec_fn=_jail_child_setup(cgroup), close_fds=True)

    def _start_plain(self, argv: list[str], env: dict, pipes: _Pipes, files: dict[str, str],
                     workdir: str) -> subprocess.Popen:
        """Without the jail: the files in a fresh directory, own session, rlimits."""
        for name, text in files.items():
            with open(os.path.join(workdir, name), "w") as f:
                f.write(text)
        return subprocess.Popen(argv, cwd=workdir, stdin=pipes.child["stdin"], stdout=pipes.child["stdout"],
                                stderr=pipes.child["stderr"], env={**env, "HOME": workdir, "TMPDIR": workdir},
                                pass_fds=(pipes.child["result"], pipes.child["followup"]),
                                preexec_fn=_plain_child_setup(self.limits), close_fds=True)

    def _collect(self, proc: subprocess.Popen, pipes: _Pipes, followup: bytes | None):
        """Read stdout, stderr and the result channel until they close and the process ended, the deadline
        passes, or one of them goes past `output_bytes`; hand over `followup` once the result channel says the
        program's side is ready. Returns ({stream: bytes}, timed out, output exceeded)."""
        cap = self.limits.output_bytes
        streams = {name: pipes.worker[name] for name in ("stdout", "stderr", "result")}
        data = {name: bytearray() for name in streams}
        deadline = time.monotonic() + self.limits.wall_s
        if followup is None:
            os.close(pipes.worker.pop("followup"))
        exited_at = None
        timed_out = exceeded = False
        while streams:
            now = time.monotonic()
            if now >= deadline:
                timed_out = proc.poll() is None
                break
            if proc.poll() is not None:
                exited_at = exited_at or now
                if now - exited_at > EXIT_GRACE_S:  # without the jail, an escaped child may hold a stream
                    break
            ready, _, _ = select.select(list(streams.values()), [], [], min(deadline - now, 0.05))
            for name in [name for name, fd in streams.items() if fd in ready]:
                chunk = os.read(streams[name], 65536)
                if not chunk:
                    del streams[name]
                    continue
                data[name] += chunk
                exceeded = exceeded or len(data[name]) > cap
            if exceeded:
                break
            if "followup" in pipes.worker and data["result"]:
                pipes.hand_over("followup", followup)
        return {name: bytes(value[:cap]) for name, value in data.items()}, timed_out, exceeded

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


def _write_all(fd: int, data: bytes) -> None:
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError:
        pass  # the program stopped reading (or exited): it gets EOF / nothing more


def sys_python() -> str:
    """The system interpreter that sets the jail up (the standard library only)."""
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
