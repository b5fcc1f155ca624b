"""Ray: `launch.py run --cluster ray [--address ADDR]` places the roles on an existing Ray cluster.

Plan nodes are the cluster's alive nodes. One placement group holds one bundle per node (STRICT_SPREAD, each
bundle reserving the same number of GPUs on its node: the fewest any alive node has, or `--gpus-per-node`), so
no other Ray job takes the GPUs the plan hands out, and plan node k is wherever bundle k landed. Every role is
a `RoleProcess` Ray actor scheduled into its node's bundle: it starts the role's process there (`python -m
<module>`, the same command as on one host, with the launcher's environment, RAY_* left out, plus the role's),
keeps its output in a node-local temporary file that is unlinked as soon as it is open (the role writes to it,
the actor reads it through its descriptor, and the kernel frees it once both are gone: nothing is left on the
node however the run ends), and answers `status` (exit status and the output from an offset, at most
`READ_CHUNK` bytes: the launcher's `poll` gathers it into `runs/<name>/logs/<role>.out`, no shared filesystem
needed) and `signal`. The role stays in its actor's process group, which Ray kills when the actor dies (a new
session would let the role's own children, vLLM's engine process or the verifier pool, outlive it); `signal`
reaches every member of that group but the actor. The role also dies with its actor if the actor is SIGKILLed
(PR_SET_PDEATHSIG), and Ray kills the actors when the launcher's job ends, however it ends.

The repository must be at the same path on every node (as the Python environment must), which is how Ray
clusters built from one image, or sharing a filesystem, look.

Who produces, who consumes: each role's process writes its node-local output file; the launcher's `poll`
asks every role's actor for its status at once and appends what comes back to the role's log. What
blocks, and on timeout: reaching the cluster (a TCP connect of up to 10 s to a host:port address before
`ray.init`), reserving the placement group (60 s, then a RuntimeError naming the nodes and GPUs asked
for), and each `status` answer (`RPC_TIMEOUT_S`: a role that does not answer in time is asked again at the
next poll; one `poll` can wait that long for each role). Nothing is dropped: output larger than
`READ_CHUNK` comes over several polls, and a role's exit status is taken only once all its output is
here. A role whose actor or node dies gets the return code `LOST`, with the reason appended to its log;
`ended` is always None, so the run reports that role's failure. A stop waits `grace_s` after SIGTERM and
`reap_s` after SIGKILL, polling as it goes (so it too can take longer, by those RPC deadlines), then kills
every role's actor.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time

from asyncor.launcher.backend import Node, RoleSpec

READ_CHUNK = 1 << 20
RPC_TIMEOUT_S = 30.0
LOST = -1000  # returncode of a role whose Ray actor (or node) died


class RoleProcess:
    """Runs on the role's node (as a Ray actor, see `_actor_class`)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: str):
        import ctypes
        import subprocess

        def die_with_actor():
            try:
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            except OSError:
                pass

        fd, path = tempfile.mkstemp(prefix=f"asyncor-{name}-", suffix=".out")
        try:
            # The output file has no name on the node: the role's descriptor and `self.output` keep it; when
            # the role has exited and this actor is gone (killed at the run's end, or with its node) the
            # kernel frees it. The launcher keeps the output, in runs/<name>/logs/<role>.out.
            self.output = open(path, "rb", buffering=0)
            os.unlink(path)
            # Ray's worker environment (OMP_NUM_THREADS=1, RAY_*) is not passed on: `env` is the launcher's.
            self.proc = subprocess.Popen(argv, stdout=fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=cwd if os.path.isdir(cwd) else None,
                                         preexec_fn=die_with_actor)
        finally:
            os.close(fd)

    def status(self, offset: int) -> tuple[int | None, bytes]:
        """(exit status or None, output from `offset`, at most READ_CHUNK bytes)."""
        code = self.proc.poll()
        self.output.seek(offset)
        return code, self.output.read(READ_CHUNK)

    def close(self) -> None:
        """Let go of the output (the actor's death does the same); the role's own descriptor keeps it while
        it runs."""
        self.output.close()

    def signal(self, sig: int) -> None:
        """`sig` to the role and everything it started (the actor's process group, the actor excepted)."""
        group, me = os.getpgid(0), os.getpid()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != me:
                try:
                    if os.getpgid(int(entry)) == group:
                        os.kill(int(entry), sig)
                except (ProcessLookupError, PermissionError):
                    pass


class RayRole:
    """The launcher's handle on one role (same attributes as launcher.processes.Child)."""

    def __init__(self, name: str, node: str, log_path: str, actor):
        self.name, self.node, self.log_path, self.actor = name, node, log_path, actor
        self.offset = 0
        self._returncode = None

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def tail(self, lines: int = 15) -> str:
        from asyncor.launcher.processes import log_tail

        return log_tail(self.log_path, lines)

    def lost(self, why: str) -> None:
        self._returncode = LOST
        with open(self.log_path, "a") as f:
            f.write(f"\n[launcher] the role's Ray actor is gone: {why}\n")


def _launcher_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """ray.init waits minutes for a GCS that is not there; a host:port is tried first (TCP connect)."""
    import socket

    host, _, port = address.rpartition(":")
    if address == "auto" or address.startswith(("ray://", "local")) or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RuntimeError(f"--cluster ray: no Ray cluster at {address!r} ({exc}); start one with "
                           "`ray start --head` or pass --address") from None


class RayBackend:
    kind = "ray"

    def __init__(self, address: str | None = None, gpus_per_node: int | None = None):
        import ray
        from ray.util.placement_group import placement_group

        self.ray = ray
        address = address or os.environ.get("RAY_ADDRESS") or "auto"
        _check_reachable(address)
        try:
            # The role actors import asyncor.launcher from the environment installed at the same path on every node.
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except ConnectionError as exc:
            raise RuntimeError(f"--cluster ray: no Ray cluster at {address!r} ({exc}); start one with "
                               "`ray start --head` or pass --address") from None
        alive = [n for n in ray.nodes() if n["Alive"]]
        gpus = min(int(n["Resources"].get("GPU", 0)) for n in alive) if gpus_per_node is None else gpus_per_node
        bundles = [{"CPU": 0.01, **({"GPU": gpus} if gpus else {})} for _ in alive]
        self.pg = placement_group(bundles, strategy="STRICT_SPREAD", name=f"asyncor-{os.getpid()}")
        try:
            ray.get(self.pg.ready(), timeout=60)
        except Exception as exc:  # GetTimeoutError: resources taken by another job
            ray.util.remove_placement_group(self.pg)
            raise RuntimeError(f"--cluster ray: could not reserve {len(alive)} node(s) with {gpus} GPU(s) each "
                               f"within 60 s ({type(exc).__name__}); is another job holding them?") from None
        by_id = {n["NodeID"]: n for n in alive}
        bundle_nodes = ray.util.placement_group_table(self.pg)["bundles_to_node_id"]
        self.nodes = []
        for k in range(len(alive)):
            info = by_id[bundle_nodes[k]]
            address = info["NodeManagerAddress"]
            self.nodes.append(Node(address, f"ray node {address} ({info['NodeID'][:8]})",
                                   tuple(str(i) for i in range(gpus))))
        self.launcher_address = ray.util.get_node_ip_address()
        self._actor = ray.remote(num_cpus=0)(RoleProcess)

    def start(self, spec: RoleSpec, log_dir: str) -> RayRole:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        os.makedirs(log_dir, exist_ok=True)
        log_path = os.path.join(log_dir, f"{spec.name}.out")
        open(log_path, "ab").close()
        strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=spec.node)
        actor = self._actor.options(scheduling_strategy=strategy, max_restarts=0).remote(
            spec.name, [sys.executable, "-m", spec.module, *spec.args],
            {**_launcher_env(), **spec.env, "ASYNCOR_LOG_TO_STDOUT": "1"},  # structured logs come back with the output
            os.getcwd())
        return RayRole(spec.name, self.nodes[spec.node].label, log_path, actor)

    def poll(self, handles: list[RayRole]) -> None:
        ray = self.ray
        live = [h for h in handles if h.offset >= 0]  # -1: its actor is gone
        refs = [h.actor.status.remote(h.offset) for h in live]
        for h, ref in zip(live, refs):
            try:
                code, data = ray.get(ref, timeout=RPC_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                continue  # a busy node: ask again next poll
            except ray.exceptions.RayError as exc:  # the actor or its node died
                if h.returncode is None:
                    h.lost(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                h.offset = -1
                continue
            if data:
                with open(h.log_path, "ab") as f:
                    f.write(data)
                h.offset += len(data)
            if code is not None and len(data) < READ_CHUNK:
                h._returncode = code  # only once its output is all here

    def stop(self, handles: list[RayRole], grace_s: float, reap_s: float) -> list[str]:
        ray = self.ray
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, reap_s)):
            running = [h for h in handles if h.returncode is None]
            for h in running:
                h.actor.signal.remote(sig)
            deadline = time.monotonic() + wait_s
            while running and time.monotonic() < deadline:
                time.sleep(0.1)
                self.poll(running)
                running = [h for h in running if h.returncode is None]
        stuck = [f"{h.name} on {h.node}" for h in handles if h.returncode is None]
        for h in handles:
            ray.kill(h.actor)  # its process dies with it (PR_SET_PDEATHSIG)
        return stuck

    def ended(self) -> None:
        return None  # a lost node shows as its roles' failure (RayRole.lost), reported with the node

    def close(self) -> None:
        ray = self.ray
        try:
            ray.util.remove_placement_group(self.pg)
        finally:
            ray.shutdown()
