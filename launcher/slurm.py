"""SLURM: `launch.py run --cluster slurm` inside an allocation (salloc or sbatch), and `launch.py submit`.

Nodes are the allocation's, in SLURM's order (`scontrol show hostnames $SLURM_JOB_NODELIST`); plan node 0
is the first. Every role is one job step started from the launcher:

    srun --jobid=<job> --nodes=1 --ntasks=1 --nodelist=<node> --overlap --cpu-bind=none --kill-on-bad-exit=1 \\
         --unbuffered --job-name=<role> --export=ALL [env CUDA_VISIBLE_DEVICES=<the plan's GPUs>] \\
         python -m <role module> ...

`srun` runs on the launcher's host as its child: it forwards the task's output (written into
`logs/<role>.out` on the launcher's host, so no shared filesystem is needed for logs) and exits with the
task's status, so the local back-end's process handling applies as is. srun does not forward SIGTERM (it
SIGKILLs the task), so a stop first asks SLURM to deliver SIGTERM to each step (`scancel --signal=TERM
<job>.<step>`, steps found by name), then, after the grace period, kills what is left through srun.
`--overlap` lets the steps share the allocation's CPUs (the roles are long-lived and pin their own
threads). The steps get the job's GPUs; the plan's choice is set with `env CUDA_VISIBLE_DEVICES=...`
because SLURM would overwrite an exported one. That assumes the job owns its nodes' GPUs in SLURM's order
(`launch.py submit` asks for `--exclusive` when it asks for GPUs); only a GPU cluster can check it.

Stopping: Ctrl-C in salloc, `scancel`, or the batch job's time limit reach the launcher as SIGINT / SIGTERM
(launcher/stop_signals.py), which stops every step; SLURM itself kills every step when the job ends.

Who produces, who consumes: each srun writes its task's output into the role's log; the launcher polls
the sruns' exit codes (launcher/processes.py) and asks SLURM (`squeue`) whether the job itself ended.
What blocks, and on timeout: `scontrol show hostnames` up to 30 s (then a RuntimeError: the run does not
start); `squeue` up to 10 s (`ended` then answers None, "cannot tell"; `stop` signals no step and goes
straight to the sruns); `scancel` up to 10 s (ignored: the sruns are still stopped); `sbatch` up to
`SBATCH_TIMEOUT_S` (a `SubmitError`), with no deadline under `--wait`, which lasts as long as the job. A
stop therefore takes up to `grace_s` + 0.5 s + `reap_s` plus those two 10 s deadlines. Nothing is dropped.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from asyncor.launcher.backend import Node, RoleSpec
from asyncor.launcher.processes import Child, spawn, stop_all
from asyncor.runtime.run_dir import RunDir


SBATCH_TIMEOUT_S = 120.0  # sbatch without --wait: queueing a job takes seconds


def _hostnames(nodelist: str) -> list[str]:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"scontrol show hostnames {nodelist} did not answer within 30 s: is slurmctld "
                           "reachable?") from None
    if out.returncode != 0:
        raise RuntimeError(f"scontrol show hostnames {nodelist} failed: {out.stderr.strip()}")
    return out.stdout.split()


def gpus_on_node(env=os.environ) -> int:
    """GPUs the job has on each node, as SLURM reports them (0 when it asked for none)."""
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        value = env.get(key, "").split(":")[-1]  # "8" or "h100:8"
        if value.isdigit():
            return int(value)
    return 0


class SlurmBackend:
    kind = "slurm"

    def __init__(self, gpus_per_node: int | None = None):
        self.job_id = os.environ.get("SLURM_JOB_ID")
        if not self.job_id:
            raise RuntimeError("--cluster slurm runs inside a SLURM allocation (salloc or sbatch) and SLURM_JOB_ID "
                               "is not set: start it under salloc, or use `launch.py submit --cluster slurm`")
        if shutil.which("srun") is None:
            raise RuntimeError("--cluster slurm: srun is not on PATH")
        nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
        hosts = _hostnames(nodelist)
        gpus = gpus_on_node() if gpus_per_node is None else gpus_per_node
        self.nodes = [Node(host, host, tuple(str(i) for i in range(gpus))) for host in hosts]
        # Roles reach the launcher where it runs: the batch host under sbatch, the salloc host otherwise.
        self.launcher_address = socket.gethostname()

    def srun_prefix(self, spec: RoleSpec) -> list[str]:
        host = self.nodes[spec.node].address
        prefix = ["srun", f"--jobid={self.job_id}", "--nodes=1", "--ntasks=1", f"--nodelist={host}", "--overlap",
                  "--cpu-bind=none", "--kill-on-bad-exit=1", "--unbuffered", f"--job-name={spec.name}",
                  "--export=ALL"]
        if "CUDA_VISIBLE_DEVICES" in spec.env:
            prefix += ["env", f"CUDA_VISIBLE_DEVICES={spec.env['CUDA_VISIBLE_DEVICES']}"]
        return prefix

    def start(self, spec: RoleSpec, log_dir: str) -> Child:
        env = {k: v for k, v in spec.env.items() if k != "CUDA_VISIBLE_DEVICES"}
        env["ASYNCOR_LOG_TO_STDOUT"] = "1"  # structured logs come back through srun with the output
        return spawn(spec.name, spec.module, spec.args, log_dir, env, prefix=self.srun_prefix(spec),
                     node=self.nodes[spec.node].label)

    def poll(self, handles: list[Child]) -> None:
        pass  # srun writes the task's output into the log as it comes

    def ended(self) -> str | None:
        """Why the allocation is over (scancel, time limit, salloc interrupted), or None while it runs."""
        try:
            out = subprocess.run(["squeue", "--noheader", f"--jobs={self.job_id}", "--format=%T"],
                                 capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        state = out.stdout.strip()
        if out.returncode == 0 and state in ("RUNNING", "CONFIGURING"):
            return None
        return (f"SLURM job {self.job_id} ended ({state or 'no longer queued'}: scancel, its time limit, or "
                "salloc interrupted)")

    def step_ids(self, names: set[str]) -> list[str]:
        """`<job>.<step>` of this job's running steps named in `names`."""
        try:
            out = subprocess.run(["squeue", "--steps", f"--jobs={self.job_id}", "--noheader", "--format=%i %j"],
                                 capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        return [f[0] for f in (line.split() for line in out.splitlines()) if len(f) == 2 and f[1] in names]

    def stop(self, handles: list[Child], grace_s: float, reap_s: float) -> list[str]:
        running = {h.name for h in handles if h.returncode is None}
        steps = self.step_ids(running) if running else []
        if steps:  # the roles' own SIGTERM handling (final figures, clean exits), as on one host
            try:
                subprocess.run(["scancel", "--signal=TERM", *steps], capture_output=True, timeout=10)
            except (OSError, subprocess.SubprocessError):
                pass  # stop_all below still ends every srun (and with it its task)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and any(h.returncode is None for h in handles):
                time.sleep(0.05)
        return stop_all(handles, 0.5, reap_s)  # what is left: SIGTERM to srun kills its task, then SIGKILL

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- launch.py submit


class SubmitError(RuntimeError):
    pass


@dataclass
class SubmittedJob:
    job_id: str
    script: str
    output: str
    exit_code: int | None  # with --wait: the job's exit code


def batch_script(config, config_path: str | None, overrides: list[str], nodes: int, gpus_per_node: int,
                 submit_dir: str) -> str:
    run = [sys.executable, "-m", "asyncor.launch", "run", "--cluster", "slurm"]
    if config_path:
        run += ["--config", os.path.abspath(config_path)]
    for item in overrides:
        run += ["--set", item]
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=asyncor-{config.run.name}",
             f"#SBATCH --nodes={nodes}",
             "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --output={os.path.join(submit_dir, 'slurm-%j.out')}"]
    if gpus_per_node:
        lines += [f"#SBATCH --gpus-per-node={gpus_per_node}", "#SBATCH --exclusive"]
    lines += ["# Written by `launch.py submit`: the launcher runs here, on the first node of the allocation,",
              "# and starts every role with srun (launcher/slurm.py). scancel stops them all.",
              "set -euo pipefail",
              f"cd {shlex.quote(os.getcwd())}",
              "exec " + " ".join(shlex.quote(a) for a in run), ""]
    return "\n".join(lines)


def submit(config, config_path: str | None, overrides: list[str], nodes: int, gpus_per_node: int,
           sbatch_args: list[str], wait: bool) -> SubmittedJob:
    if shutil.which("sbatch") is None:
        raise SubmitError("sbatch is not on PATH: run `launch.py submit` on a SLURM login node")
    if nodes < 1 or gpus_per_node < 0:
        raise SubmitError(f"--nodes {nodes} / --gpus-per-node {gpus_per_node}: need >= 1 node and >= 0 GPUs")
    from asyncor.launcher.plan import PlanError, make_plan

    try:
        make_plan(config, nodes, gpus_per_node)  # refuse a layout that cannot run before it queues for hours
    except PlanError as exc:
        raise SubmitError(str(exc)) from None
    submit_dir = RunDir(os.path.abspath(config.run_dir)).submit
    os.makedirs(submit_dir, exist_ok=True)
    script = os.path.join(submit_dir, "job.sbatch")
    with open(script, "w") as f:
        f.write(batch_script(config, config_path, overrides, nodes, gpus_per_node, submit_dir))
    cmd = ["sbatch", "--parsable", *(["--wait"] if wait else []), *sbatch_args, script]
    try:  # sbatch returns at once unless --wait (then: when the job ends); an unreachable controller is named
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=None if wait else SBATCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SubmitError(f"{' '.join(cmd)} did not answer within {SBATCH_TIMEOUT_S:.0f} s: is slurmctld "
                          "reachable (scontrol ping)?") from None
    job_id = out.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SubmitError(f"{' '.join(cmd)} failed (exit {out.returncode}): {out.stderr.strip()}")
    return SubmittedJob(job_id, script, os.path.join(submit_dir, f"slurm-{job_id}.out"), out.returncode if wait else None)
