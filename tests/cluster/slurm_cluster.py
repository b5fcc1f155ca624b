"""A throwaway, real, single-node SLURM cluster on this host, for tests.

``slurm_cluster(workdir)`` is a context manager that, run as root, brings up
a complete SLURM installation on the local machine and tears it down again:

1. MUNGE (SLURM's authentication service): creates ``/etc/munge/munge.key``
   if it is missing and starts ``munged`` unless one is already answering.
   A ``munged`` we started is stopped at exit; one we found is left alone.
2. Writes ``slurm.conf`` (and an empty ``plugstack.conf``) into ``workdir``,
   describing one node -- this host, under its short hostname -- with the
   CPUs and memory ``slurmd -C`` detects (or ``cpus`` CPUs if given), one
   default partition ``debug``, no cgroups (``proctrack/linuxproc``,
   ``task/none``), no accounting, short timeouts, and all state, spool and
   log files under ``workdir``. The system's ``/etc/slurm`` is not touched:
   every SLURM command finds the file through the ``SLURM_CONF`` variable.
   The daemons listen on free ports picked at start, so a SLURM already
   installed on the host is not disturbed.
3. Starts ``slurmctld -D`` and ``slurmd -D`` as child processes and waits
   (30 s at most) until ``sinfo`` reports the node ``idle`` and the
   controller's scheduler has run once (about 3 s in all); if that does not
   happen, raises ``RuntimeError`` with the tail of the daemons' logs.
4. Yields a dict of environment variables (``SLURM_CONF``, ...) that clients
   (``sbatch``, ``srun``, ``salloc``, ``squeue``, ...) need, e.g.
   ``subprocess.run(["sbatch", ...], env={**os.environ, **slurm_env})``.
5. On exit: cancels every job, waits briefly for them to end, stops both
   daemons (SIGTERM, then SIGKILL), then kills whatever is still running with
   this cluster's ``SLURM_CONF`` in its environment (``slurmstepd``,
   job tasks, stray ``srun``/``salloc`` clients -- any process given the
   yielded env, except this process and its ancestors), and stops
   ``munged`` if we started it. Nothing of the cluster is left running.

``slurm_available()`` says whether this can work here (None) or why not (a
reason string suited to ``pytest.skip``).

Typical use::

    reason = slurm_available()
    if reason:
        pytest.skip(reason)
    with slurm_cluster(str(tmp_path)) as slurm_env:
        env = {**os.environ, **slurm_env}
        subprocess.run(["sbatch", "--wait", "--wrap", "hostname"], env=env, check=True)

Keep ``workdir`` short (a few dozen characters): ``slurmd`` puts UNIX
sockets in its spool directory, and those paths are limited to 107 bytes.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

# Debian puts the daemons in /usr/sbin, which a non-login PATH may lack.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])

_DAEMONS = ("slurmctld", "slurmd", "munged")
_CLIENTS = ("sinfo", "sdiag", "squeue", "scancel", "sbatch", "srun", "salloc", "scontrol", "munge")

MUNGE_KEY = "/etc/munge/munge.key"
MUNGE_RUN_DIR = "/run/munge"

STARTUP_TIMEOUT_S = 30.0  # from starting the daemons to the cluster being ready
JOB_DRAIN_TIMEOUT_S = 15.0  # after scancel, how long to wait for jobs to go
DAEMON_STOP_TIMEOUT_S = 10.0  # SIGTERM grace per daemon before SIGKILL


def _which(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def _short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def slurm_available() -> str | None:
    """None if ``slurm_cluster`` can run here, else the reason it cannot."""
    if not sys.platform.startswith("linux"):
        return "a local SLURM cluster needs Linux"
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd must run as root)"
    missing = [b for b in _DAEMONS + _CLIENTS if _which(b) is None]
    if not os.path.exists(MUNGE_KEY) and _which("mungekey") is None:
        missing.append("mungekey")
    if missing:
        return "SLURM/MUNGE not installed (missing: " + ", ".join(missing) + ")"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (is the munge package installed?)"
    return None


# --------------------------------------------------------------------- munge


def _munge_works() -> bool:
    """True if a munged is answering on the default socket."""
    try:
        r = subprocess.run([_which("munge") or "munge", "-n"], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _ensure_munge_key() -> None:
    """Create /etc/munge/munge.key (owner munge, mode 0400) if it is missing."""
    if os.path.exists(MUNGE_KEY):
        return
    munge_uid = pwd.getpwnam("munge").pw_uid
    munge_gid = grp.getgrnam("munge").gr_gid
    os.makedirs(os.path.dirname(MUNGE_KEY), mode=0o700, exist_ok=True)
    os.chown(os.path.dirname(MUNGE_KEY), munge_uid, munge_gid)
    mungekey = _which("mungekey")
    if mungekey:
        subprocess.run([mungekey, "--create", "--keyfile", MUNGE_KEY], check=True, capture_output=True)
    else:  # older munge: 1 KiB of randomness is a valid key
        with open(MUNGE_KEY, "wb") as f:
            f.write(os.urandom(1024))
    os.chown(MUNGE_KEY, munge_uid, munge_gid)
    os.chmod(MUNGE_KEY, 0o400)


def _start_munged(log_path: str) -> subprocess.Popen | None:
    """Start munged (as user munge) unless one already works; return it if started."""
    if _munge_works():
        return None
    _ensure_munge_key()
    munge_pw = pwd.getpwnam("munge")
    # munged wants its socket directory owned by itself and not world-writable.
    os.makedirs(MUNGE_RUN_DIR, exist_ok=True)
    os.chown(MUNGE_RUN_DIR, munge_pw.pw_uid, munge_pw.pw_gid)
    os.chmod(MUNGE_RUN_DIR, 0o755)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            # -F: stay in the foreground so we own the process; -f: take over
            # a stale socket left by a munged that died uncleanly.
            [_which("munged") or "munged", "-F", "-f"],
            user=munge_pw.pw_uid,
            group=munge_pw.pw_gid,
            extra_groups=[],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"munged exited with {proc.returncode}:\n{_tail(log_path)}")
        if _munge_works():
            return proc
        time.sleep(0.1)
    _stop_process(proc)
    raise RuntimeError(f"munged did not answer within 10 s:\n{_tail(log_path)}")


# ---------------------------------------------------------------- slurm.conf


def _free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that are free right now."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:  # bound together, so the kernel hands out distinct ports
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]


def _node_line(node: str, cpus: int | None) -> str:
    """The NodeName= line: ``slurmd -C``'s hardware, or ``cpus`` flat CPUs."""
    out = subprocess.run([_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    # e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2
    #       ThreadsPerCore=1 RealMemory=24105" then "UpTime=...".
    fields = dict(kv.split("=", 1) for kv in out.split("\n", 1)[0].split() if "=" in kv)
    memory = fields.get("RealMemory", "1")
    if cpus is None:
        hw = " ".join(
            f"{k}={fields[k]}"
            for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
            if k in fields
        )
    else:
        # One socket of `cpus` single-thread cores; SlurmdParameters=
        # config_overrides lets this exceed the real hardware.
        hw = f"CPUs={cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={cpus} ThreadsPerCore=1"
    return f"NodeName={node} NodeHostname={node} {hw} RealMemory={memory} State=UNKNOWN"


def _write_config(workdir: str, node: str, cpus: int | None) -> str:
    dirs = {name: os.path.join(workdir, name) for name in ("state", "spool", "log")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    plugstack = os.path.join(workdir, "plugstack.conf")
    with open(plugstack, "w") as f:  # no SPANK plugins (ignore /etc/slurm/plugstack.conf)
        f.write("")
    ctld_port, slurmd_port = _free_ports(2)
    conf = f"""\
# Written by tests/cluster/slurm_cluster.py: a single-node test cluster.
ClusterName=asyncortest
SlurmctldHost={node}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge

StateSaveLocation={dirs["state"]}
SlurmdSpoolDir={dirs["spool"]}
SlurmctldPidFile={workdir}/slurmctld.pid
SlurmdPidFile={workdir}/slurmd.pid
SlurmctldLogFile={dirs["log"]}/slurmctld.log
SlurmdLogFile={dirs["log"]}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
PlugStackConfig={plugstack}

# No cgroups: track processes by parentage, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none

SchedulerType=sched/builtin
# Schedule new batch jobs within ~1 s (default: up to 3 s later), and retry
# all pending jobs every 2 s rather than every 60 s.
SchedulerParameters=batch_sched_delay=0,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Trust the node description below even if it exceeds the hardware.
SlurmdParameters=config_overrides
ReturnToService=2

# Short timeouts so that failures and teardown are quick.
KillWait=5
UnkillableStepTimeout=10
SlurmctldTimeout=10
SlurmdTimeout=10
MessageTimeout=10
InactiveLimit=0
Waittime=0
MinJobAge=60

{_node_line(node, cpus)}
PartitionName=debug Nodes={node} Default=YES State=UP MaxTime=INFINITE
"""
    path = os.path.join(workdir, "slurm.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


# ----------------------------------------------------------------- processes


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"<{path}: {e}>"


def _stop_process(proc: subprocess.Popen, timeout: float = DAEMON_STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _pids_with_env(key: str, value: str) -> list[int]:
    """Processes whose initial environment has ``key=value`` (not us or our ancestors)."""
    spare = {os.getpid()}
    pid = os.getppid()
    while pid > 1:  # our ancestors, e.g. a shell that exported SLURM_CONF
        spare.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    needle = f"{key}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in spare:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:  # gone, or a kernel thread
            continue
    return found


def _kill_leftovers(conf_path: str) -> None:
    """SIGKILL every process still running with this cluster's SLURM_CONF."""
    for _ in range(20):
        pids = _pids_with_env("SLURM_CONF", conf_path)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _slurm(env: dict[str, str], *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_which(args[0]) or args[0], *args[1:]], env=env, capture_output=True, text=True, timeout=timeout
    )


def _scheduler_has_run(env: dict[str, str]) -> bool:
    """True once slurmctld's main scheduler has completed a cycle.

    A fresh slurmctld only starts scheduling batch jobs 2-3 s after it boots;
    a job submitted earlier sits PENDING until then, which makes e.g.
    ``sbatch --wait`` (which polls after 2 s, then 8 s more) take 10 s instead
    of 2 s. Waiting for the first cycle here makes the cluster promptly usable.
    """
    r = _slurm(env, "sdiag", timeout=5)
    m = re.search(r"Main schedule statistics.*?Total cycles:\s*(\d+)", r.stdout, re.S)
    return r.returncode == 0 and m is not None and int(m.group(1)) > 0


def _wait_idle(env: dict[str, str], node: str, daemons: dict[str, subprocess.Popen], logs: dict[str, str]) -> None:
    """Wait until the node is idle and the scheduler runs; else raise with the logs' tails."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    state = ""
    while time.monotonic() < deadline and all(p.poll() is None for p in daemons.values()):
        with contextlib.suppress(subprocess.TimeoutExpired):
            r = _slurm(env, "sinfo", "-h", "-n", node, "-o", "%T", timeout=5)
            state = (r.stdout or r.stderr).strip()
            if r.returncode == 0 and state == "idle" and _scheduler_has_run(env):
                return
        time.sleep(0.2)
    report = [
        f"SLURM cluster not ready within {STARTUP_TIMEOUT_S:.0f} s "
        f"(want node {node} idle and one scheduler cycle; last sinfo: {state!r})"
    ]
    report += [f"{name} exited with code {p.returncode}" for name, p in daemons.items() if p.poll() is not None]
    for path in logs.values():
        report.append(f"--- tail of {path} ---\n{_tail(path)}")
    raise RuntimeError("\n".join(report))


@contextlib.contextmanager
def slurm_cluster(workdir: str, cpus: int | None = None) -> Iterator[dict[str, str]]:
    """Run a single-node SLURM cluster on this host for the ``with`` block.

    ``workdir``: an existing, preferably short, directory for the config,
    state, spool and logs (all left there for inspection afterwards).
    ``cpus``: CPUs the node advertises (default: what ``slurmd -C`` sees).
    Yields the environment variables clients need (at least ``SLURM_CONF``).
    """
    reason = slurm_available()
    if reason:
        raise RuntimeError(reason)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    node = _short_hostname()
    log_dir = os.path.join(workdir, "log")
    os.makedirs(log_dir, exist_ok=True)

    munged: subprocess.Popen | None = None
    daemons: dict[str, subprocess.Popen] = {}
    conf_path = ""
    try:
        munged = _start_munged(os.path.join(log_dir, "munged.out"))
        conf_path = _write_config(workdir, node, cpus)
        # Our own SLURM_* variables (e.g. when run inside a SLURM job) must not
        # leak into this cluster.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = conf_path
        # Daemons run in the foreground (-D) as our children, each in its own
        # session so a terminal's Ctrl-C reaches only us; stdout/stderr go to
        # *.out next to their log files (useful if they die before logging).
        logs = {}
        for name, extra in (("slurmctld", ["-c"]), ("slurmd", ["-c", "-N", node])):
            out_path = os.path.join(log_dir, f"{name}.out")
            logs[name] = os.path.join(log_dir, f"{name}.log")
            with open(out_path, "ab") as out:
                daemons[name] = subprocess.Popen(
                    [_which(name) or name, "-D", "-f", conf_path, *extra],
                    env=env,
                    cwd=workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        _wait_idle(env, node, daemons, logs)
        yield {"SLURM_CONF": conf_path}
    finally:
        if conf_path:
            env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
            env["SLURM_CONF"] = conf_path
            if all(p.poll() is None for p in daemons.values()) and daemons:
                # Cancel all jobs (every job is in partition debug), and give
                # SLURM a moment to end them itself: tasks get SIGTERM, then
                # SIGKILL after KillWait (5 s).
                with contextlib.suppress(subprocess.TimeoutExpired):
                    _slurm(env, "scancel", "--partition=debug")
                deadline = time.monotonic() + JOB_DRAIN_TIMEOUT_S
                while time.monotonic() < deadline:
                    try:
                        r = _slurm(env, "squeue", "-h", "-o", "%i", timeout=5)
                    except subprocess.TimeoutExpired:
                        break
                    if r.returncode != 0 or not r.stdout.strip():
                        break
                    time.sleep(0.2)
            # Stopping slurmd does not end running steps (slurmstepd lives
            # on), hence the scancel above and the sweep below.
            for name in ("slurmd", "slurmctld"):
                if name in daemons:
                    _stop_process(daemons[name])
            _kill_leftovers(conf_path)
        if munged is not None:
            _stop_process(munged)
