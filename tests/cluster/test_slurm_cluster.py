"""Smoke test for tests/cluster/slurm_cluster.py: a real batch job on a local SLURM."""

import os
import subprocess

import pytest

from tests.cluster.slurm_cluster import slurm_available, slurm_cluster


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sbatch_runs_a_job(tmp_path):
    reason = slurm_available()
    if reason:
        pytest.skip(reason)
    out_file = tmp_path / "ok.txt"
    with slurm_cluster(str(tmp_path / "slurm")) as slurm_env:
        env = {**os.environ, **slurm_env}
        r = subprocess.run(
            ["sbatch", "--wait", "--chdir", str(tmp_path), "--wrap", f"echo ok > {out_file}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
    assert out_file.read_text() == "ok\n"
