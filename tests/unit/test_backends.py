"""Back-end pieces that need no cluster: the batch script, SLURM's GPU count, and clear refusals outside
an allocation."""

import os
import subprocess
import sys

import pytest

from asyncor.configs.loader import load_config
from asyncor.launcher.slurm import SubmitError, batch_script, gpus_on_node, submit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_batch_script_runs_the_same_config_and_overrides_under_slurm(tmp_path):
    config = load_config(None, ["run.name=exp1"])
    script = batch_script(config, "configs/tiny.toml", ["actors.count=3", 'task.kind="repeat"'], nodes=2,
                          gpus_per_node=8, submit_dir=str(tmp_path))
    assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=8" in script and "#SBATCH --exclusive" in script
    assert f"#SBATCH --output={tmp_path}/slurm-%j.out" in script and "#SBATCH --job-name=asyncor-exp1" in script
    run_line = script.splitlines()[-1]
    assert run_line.startswith(f"exec {sys.executable} -m asyncor.launch run --cluster slurm --config "
                               f"{os.path.abspath('configs/tiny.toml')}")
    assert "--set actors.count=3 --set 'task.kind=\"repeat\"'" in run_line  # quoted for the shell
    cpu = batch_script(config, None, [], nodes=1, gpus_per_node=0, submit_dir=str(tmp_path))
    assert "--gpus-per-node" not in cpu and "--exclusive" not in cpu and "--config" not in cpu


def test_gpus_per_node_as_slurm_reports_them():
    assert gpus_on_node({"SLURM_GPUS_ON_NODE": "8"}) == 8
    assert gpus_on_node({"SLURM_GPUS_PER_NODE": "h100:4"}) == 4
    assert gpus_on_node({}) == 0


def test_submit_refuses_a_layout_that_cannot_run_before_it_queues(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    (tmp_path / "sbatch").write_text("#!/bin/sh\necho should-not-run; exit 1\n")
    (tmp_path / "sbatch").chmod(0o755)
    config = load_config(None, [f"run.output_dir={tmp_path}", "actors.count=4"])
    with pytest.raises(SubmitError, match="actors.count = 4 .* 1 x 2 = 2"):
        submit(config, None, [], nodes=1, gpus_per_node=2, sbatch_args=[], wait=False)


def test_an_sbatch_that_never_answers_is_an_error_naming_the_controller(tmp_path, monkeypatch):
    """Issue 14 item 6: sbatch retries for minutes when slurmctld is unreachable; the submit has a deadline."""
    import time

    import asyncor.launcher.slurm as slurm

    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(slurm, "SBATCH_TIMEOUT_S", 0.5)
    (tmp_path / "sbatch").write_text("#!/bin/sh\nexec sleep 30\n")
    (tmp_path / "sbatch").chmod(0o755)
    config = load_config(None, [f"run.output_dir={tmp_path}"])
    start = time.monotonic()
    with pytest.raises(SubmitError, match="did not answer within 0 s: is slurmctld reachable"):
        submit(config, None, [], nodes=1, gpus_per_node=0, sbatch_args=[], wait=False)
    assert time.monotonic() - start < 10


def test_run_outside_an_allocation_or_without_a_ray_cluster_says_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_"))}
    common = ["--set", f"run.output_dir={tmp_path}"]
    slurm = subprocess.run([sys.executable, "launch.py", "run", "--cluster", "slurm", *common], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert slurm.returncode == 1 and "inside a SLURM allocation" in slurm.stderr and "Traceback" not in slurm.stderr
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[cluster]')")
    ray = subprocess.run([sys.executable, "launch.py", "run", "--cluster", "ray", "--address", "127.0.0.1:1", *common],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert ray.returncode == 1 and "no Ray cluster at '127.0.0.1:1'" in ray.stderr, ray.stderr[-2000:]
    assert not os.listdir(tmp_path)  # refused before any run directory was made
