"""A real, local, multi-node Ray cluster for tests.

``ray_cluster(nodes=2)`` starts one ``ray start --head --block`` process and
``nodes - 1`` ``ray start --address=... --block`` processes on this machine.
Each is a separate raylet (a separate Ray node, with its own NodeID and
resources) sharing the head's GCS, session directory and IP address, so a
*separate* process can ``ray.init(address=ADDR)`` with the address the context
manager yields and see ``nodes`` alive nodes.

Why ``ray start --block`` rather than ``ray.cluster_utils.Cluster``: the Ray
processes are then children of short-lived CLI processes, not of the test
process, so the test process never imports ray, never holds gRPC threads
(safe to fork afterwards) and keeps no Ray global state. ``--block`` makes
each CLI process own its node's processes: it stops them on SIGTERM. (If it
is SIGKILLed instead, GCS/raylet die with it but the raylets'
DashboardAgent/RuntimeEnvAgent outlive it for over a minute; the teardown
below finds them by session.) The CLI processes get SIGTERM
(PR_SET_PDEATHSIG) when the thread that started them dies, so a test run
killed with SIGKILL still takes its cluster down within ~2 s (only its temp
dir /tmp/rayc_* stays behind).

Teardown: SIGTERM to every ``ray start`` process (workers first), a grace
period, then SIGKILL to everything still alive that was descended from them or
still in their sessions (the raylet's worker processes included). Nothing
from the cluster survives the ``with`` block, and its temp dir is removed.

Kept small: 1 CPU per node, 100 MiB object store per node, no dashboard
(only Ray's minimal head process), the Ray client server (which `ray start` cannot
switch off) on a free port rather than its fixed 10001, which would clash
between concurrent clusters, one log monitor (on the head) for
the whole machine, usage stats off.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterator, Mapping, Sequence

from asyncor.launcher.ports import free_port

__all__ = ["ray_available", "ray_cluster", "RayClusterError"]

_STARTED = "Ray runtime started"


class RayClusterError(RuntimeError):
    pass


def ray_available() -> str | None:
    """None if ray (with its CLI) is usable from this interpreter, else a reason."""
    try:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            return "ray is not installed"
    except Exception as exc:  # pragma: no cover - broken installs
        return f"ray is not importable: {exc!r}"
    if sys.platform != "linux":
        return f"local multi-node Ray clusters are only set up on Linux, not {sys.platform}"
    if _ray_cli() is None:
        return "the `ray` command-line tool is not next to this Python interpreter"
    try:
        import psutil  # noqa: F401  (a ray dependency; used for teardown)
    except ImportError:
        return "psutil is not installed"
    return None


def _ray_cli() -> str | None:
    cand = os.path.join(os.path.dirname(sys.executable), "ray")
    if os.access(cand, os.X_OK):
        return cand
    return shutil.which("ray")


def _tail(path: str, n: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _ray_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # A cluster address in the caller's environment is not this cluster's.
    env.pop("RAY_ADDRESS", None)
    if extra:
        env.update(extra)
    return env


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """SIGTERM the ray-start process when the thread that started it dies, so a
    SIGKILLed test run does not leave a cluster behind (`ray start --block`
    stops its node on SIGTERM; Ray's own processes share their parent's fate)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def _wait_started(proc: subprocess.Popen, log: str, deadline: float, what: str) -> None:
    while True:
        if _STARTED in _tail(log, 1 << 16):
            return
        rc = proc.poll()
        if rc is not None:
            raise RayClusterError(f"{what} exited with {rc} before starting:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise RayClusterError(f"{what} did not start in time:\n{_tail(log)}")
        time.sleep(0.1)


_COUNT_ALIVE = r"""
import sys, time
from ray._raylet import GcsClient
addr, want, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
client = GcsClient(address=addr)
alive = -1
while time.monotonic() < deadline:
    try:
        infos = client.get_all_node_info(timeout=5).values()
        alive = sum(1 for i in infos if i.state == 0)  # GcsNodeInfo.ALIVE
        if alive >= want:
            print(alive); sys.exit(0)
    except Exception as exc:
        print("retry:", exc, file=sys.stderr)
    time.sleep(0.2)
print(alive); sys.exit(1)
"""


def _wait_alive(address: str, want: int, timeout: float, env: dict[str, str]) -> None:
    try:
        res = subprocess.run(
            [sys.executable, "-c", _COUNT_ALIVE, address, str(want), str(timeout)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout + 30,
        )
    except subprocess.TimeoutExpired as exc:
        raise RayClusterError(f"timed out counting alive nodes at {address}") from exc
    if res.returncode != 0:
        raise RayClusterError(
            f"only {res.stdout.strip() or '?'} of {want} Ray nodes alive at {address}:\n"
            f"{res.stderr[-3000:]}"
        )


def _snapshot(procs: Sequence[subprocess.Popen]) -> dict[int, "psutil.Process"]:
    """The cluster's processes: the ray-start processes still unreaped, their
    descendants, and every process still in their sessions (each ray-start
    process leads a session of its own, so a Ray process whose parent died is
    found too; the kernel does not reuse a session id while it has members).
    """
    import psutil

    found: dict[int, psutil.Process] = {}
    live = [p for p in procs if p.returncode is None and p.poll() is None]
    for p in live:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(p.pid)
            found[root.pid] = root
            for c in root.children(recursive=True):
                found[c.pid] = c
    sids = {p.pid for p in procs}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in found:
            with contextlib.suppress(OSError, psutil.Error):
                if os.getsid(int(entry)) in sids:
                    found[int(entry)] = psutil.Process(int(entry))
    found.pop(os.getpid(), None)
    return found


def _teardown(procs: list[subprocess.Popen], grace: float) -> None:
    import psutil

    before = _snapshot(procs)
    # Worker nodes first, then the head (its GCS last), like `ray stop`:
    # a `ray start --block` process stops its node's processes on SIGTERM.
    for p in reversed(procs):
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in reversed(procs):
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    # Whatever is left: a hung raylet, a stray worker, a late child.
    # psutil checks a process's start time before it signals, so a pid
    # reused since the snapshot is left alone.
    left = {**before, **_snapshot(procs)}
    for proc in left.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(list(left.values()), timeout=5)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


@contextlib.contextmanager
def ray_cluster(
    nodes: int = 2,
    *,
    num_cpus: int = 1,
    num_gpus: int = 0,
    object_store_memory: int = 100 * 1024 * 1024,
    resources: Sequence[Mapping[str, float]] | Mapping[str, float] | None = None,
    node_ip: str | None = None,
    startup_timeout: float = 90.0,
    shutdown_grace: float = 15.0,
    env: Mapping[str, str] | None = None,
    keep_temp_dir: bool = False,
) -> Iterator[str]:
    """Start a local ``nodes``-node Ray cluster; yield its GCS address ``"ip:port"``.

    ``resources`` is either one dict of custom resources for every node or one
    dict per node (e.g. ``[{"head": 1}, {"w1": 1}]``). All nodes share one IP:
    the host's primary address (Ray turns "127.0.0.1"/"localhost" into it, so
    the yielded address is never a loopback one); ``node_ip`` can pin another.
    Another process connects with ``ray.init(address=<yielded address>)``.
    ``num_gpus`` is a logical count per node (0 hides real GPUs from Ray; on a
    one-GPU machine two nodes with ``num_gpus=1`` both hand out device 0).
    ``env`` adds variables for the Ray processes, which actors inherit (e.g.
    ``RAY_...`` config flags); the connecting driver's environment does not
    reach actors.
    """
    reason = ray_available()
    if reason is not None:
        raise RayClusterError(reason)
    if nodes < 1:
        raise ValueError("nodes must be >= 1")
    if resources is None or isinstance(resources, Mapping):
        per_node = [dict(resources or {})] * nodes
    else:
        per_node = [dict(r) for r in resources]
        if len(per_node) != nodes:
            raise ValueError(f"{len(per_node)} resource dicts for {nodes} nodes")

    ray = _ray_cli()
    assert ray is not None
    run_env = _ray_env(env)
    # Short path: Ray's unix sockets live under it (108-byte sun_path limit).
    temp_dir = tempfile.mkdtemp(prefix="rayc_", dir="/tmp")
    os.chmod(temp_dir, 0o755)
    procs: list[subprocess.Popen] = []
    logs: list[str] = []
    t0 = time.monotonic()
    deadline = t0 + startup_timeout

    def start(args: list[str], name: str, i: int) -> subprocess.Popen:
        log = os.path.join(temp_dir, f"{name}.out")
        logs.append(log)
        cmd = [ray, "start", "--block", "--disable-usage-stats", "--log-style=record",
               "--log-color=false", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
               f"--object-store-memory={int(object_store_memory)}", *args]
        if per_node[i]:
            cmd.append(f"--resources={json.dumps(per_node[i])}")
        if node_ip:
            cmd.append(f"--node-ip-address={node_ip}")
        with open(log, "wb") as out:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, env=run_env, cwd=temp_dir,
                                 start_new_session=True, preexec_fn=_die_with_parent)
        procs.append(p)
        return p

    try:
        port = free_port()
        head = start(["--head", f"--port={port}", f"--temp-dir={temp_dir}",
                      "--include-dashboard=false",
                      f"--ray-client-server-port={free_port()}"],
                     "head", 0)
        _wait_started(head, logs[0], deadline, "ray head")
        address_file = os.path.join(temp_dir, "ray_current_cluster")
        try:
            with open(address_file) as f:
                address = f.read().strip()
        except OSError:
            raise RayClusterError(f"ray head wrote no {address_file}:\n{_tail(logs[0])}")
        for i in range(1, nodes):
            # One log monitor (the head's) serves the whole machine's session dir.
            p = start([f"--address={address}", "--include-log-monitor=false"], f"node{i}", i)
            _wait_started(p, logs[-1], deadline, f"ray node {i}")
        _wait_alive(address, nodes, max(1.0, deadline - time.monotonic()), run_env)
    except BaseException:
        _teardown(procs, shutdown_grace)
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise

    try:
        yield address
    finally:
        _teardown(procs, shutdown_grace)
        if not keep_temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
