"""launch.py on a real SLURM cluster (slurmctld + slurmd + munged started on this host by the fixture):
`submit` writes and queues a batch script, `run --cluster slurm` under salloc starts every role as a job
step, both train the tiny config to the end and write the same summary as a local run; scancel stops
every role."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.cluster.slurm_cluster import slurm_available, slurm_cluster
from tests.integration.test_pipeline import check_common, children_of, cmdline, live_pids

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
STEPS = 4


def overrides(tmp_path, name, *extra):
    items = [f"run.name={name}", f"run.output_dir={tmp_path}",
             f"run.cache_dir={os.path.join(ROOT, '.cache', 'asyncor-tests')}",
             "eval.before_and_after=true", "eval.max_problems=16", "eval.every_steps=0",
             f"learner.steps={STEPS}", "learner.prompts_per_step=4", "actors.prompts_per_chunk=4",
             "actors.group_size=4", "actors.probe=true", "buffer.max_staleness=1", "run.max_wall_s=240", *extra]
    return [a for item in items for a in ("--set", item)]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = slurm_available()
    if reason:
        pytest.skip(f"SLURM cannot run here: {reason}")
    with slurm_cluster(str(tmp_path_factory.mktemp("slurm"))) as slurm_env:
        yield {**os.environ, **slurm_env}


def check_run(run_dir):
    summary, _ = check_common(run_dir, eta=1, steps=STEPS)
    assert summary["cluster"]["kind"] == "slurm"
    assert {"before", "after"} <= set(summary["eval"])
    (host, roles), = summary["cluster"]["roles_by_node"].items()
    assert roles == ["buffer", "learner0", "actor0"]
    # Logs (structured lines included) came back through srun; the plan names the node the roles ran on.
    with open(os.path.join(run_dir, "logs", "learner.out")) as f:
        assert '"event": "exit"' in f.read()
    with open(os.path.join(run_dir, "plan.json")) as f:
        plan = json.load(f)
    assert plan["cluster"] == "slurm" and plan["node_labels"] == [host] and plan["addresses"]["buffer"] == host
    return summary


def test_submit_queues_a_batch_job_that_trains_to_the_end(slurm, tmp_path):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "launch.py", "submit", "--cluster", "slurm", "--wait",
                           *overrides(tmp_path, "submitted")], cwd=ROOT, env=slurm, capture_output=True, text=True,
                          timeout=540)
    run_dir = os.path.join(tmp_path, "submitted")
    out = [p for p in os.listdir(os.path.join(run_dir, "submit")) if p.startswith("slurm-")]
    log = open(os.path.join(run_dir, "submit", out[0])).read() if out else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + log[-4000:]
    assert "submitted job" in proc.stdout and "== asyncor run summary ==" in log
    summary = check_run(run_dir)
    print(f"submit: launch to summary {time.monotonic() - started:.0f} s; {json.dumps(summary['eval'])}")


def test_run_under_salloc_starts_every_role_as_a_job_step(slurm, tmp_path):
    proc = subprocess.run(["salloc", "--nodes=1", sys.executable, "launch.py", "run", "--cluster", "slurm",
                           *overrides(tmp_path, "salloc")], cwd=ROOT, env=slurm, capture_output=True, text=True,
                          timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_run(os.path.join(tmp_path, "salloc"))


def test_scancel_stops_every_role(slurm, tmp_path):
    proc = subprocess.run([sys.executable, "launch.py", "submit", "--cluster", "slurm",
                           *overrides(tmp_path, "cancelled", "learner.steps=1000", "eval.before_and_after=false")],
                          cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.split("submitted job ")[1].split(":")[0]
    run_dir = os.path.join(tmp_path, "cancelled")
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.monotonic() + 240
    while not (os.path.exists(metrics) and '"role": "learner"' in open(metrics).read()):
        assert time.monotonic() < deadline, "the learner never trained a step"
        time.sleep(1)
    assert len(children_of(run_dir)) >= 3  # buffer, learner, actor (and their srun)
    subprocess.run(["scancel", job], env=slurm, check=True)
    deadline = time.monotonic() + 15
    while children_of(run_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not children_of(run_dir), "roles left running 15 s after scancel"


def start_under_salloc(slurm, tmp_path, name):
    proc = subprocess.Popen(["salloc", "--nodes=1", sys.executable, "launch.py", "run", "--cluster", "slurm",
                             *overrides(tmp_path, name, "learner.steps=1000", "eval.before_and_after=false")],
                            cwd=ROOT, env=slurm, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    run_dir = os.path.join(tmp_path, name)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.monotonic() + 240
    while not (os.path.exists(metrics) and '"role": "learner"' in open(metrics).read()):
        assert time.monotonic() < deadline and proc.poll() is None, "the learner never trained a step"
        time.sleep(1)
    return proc, run_dir


def launcher_pid(run_dir):
    return next(pid for pid in live_pids() if cmdline(pid).startswith(sys.executable)  # not salloc
                and "launch.py run --cluster slurm" in cmdline(pid) and f"run.name={os.path.basename(run_dir)}" in cmdline(pid))


def test_ctrl_c_to_the_launcher_under_salloc_stops_every_role(slurm, tmp_path):
    proc, run_dir = start_under_salloc(slurm, tmp_path, "ctrlc")
    os.kill(launcher_pid(run_dir), signal.SIGINT)  # Ctrl-C in the terminal salloc gave the command to
    out, err = proc.communicate(timeout=60)
    assert "interrupted (SIGINT): every role was stopped." in err, out[-1500:] + err[-3000:]
    assert proc.returncode == 130 and not children_of(run_dir)


def test_salloc_interrupted_revokes_the_allocation_and_the_launcher_says_so(slurm, tmp_path):
    proc, run_dir = start_under_salloc(slurm, tmp_path, "revoked")
    os.kill(proc.pid, signal.SIGINT)  # salloc itself: it gives the allocation up, SLURM ends every step
    out, err = proc.communicate(timeout=60)
    assert "ended (" in err and "every role was stopped" in err, out[-1500:] + err[-3000:]
    assert proc.returncode != 0 and not children_of(run_dir)
