"""Checkpoint and exact resume with real processes (issue 14 item 5): `launch.py run --resume` continues a
run from a learner checkpoint (weights, AdamW, RNG, entropy controller, version, the buffer's data cursor),
and with η = 0 and seeded sampling the steps after resuming repeat the uninterrupted run's."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.integration.test_pipeline import ROOT, metrics, run_launcher

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5


def losses(run_dir):
    return {r["step"]: r["learner/loss"] for r in metrics(run_dir) if "learner/loss" in r}


def resume(run_dir, *overrides):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "run", "--resume", run_dir, *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc


def interrupted_copy(run_dir, tmp_path, name, keep_step):
    """The run as it would stand had it died after checkpoint `keep_step`: later checkpoints gone, its
    metrics and logs still there (the resume must set them aside)."""
    copy = os.path.join(tmp_path, name)
    shutil.copytree(run_dir, copy)
    for d in os.listdir(os.path.join(copy, "checkpoints")):
        if int(d.split("_")[1]) > keep_step:
            shutil.rmtree(os.path.join(copy, "checkpoints", d))
    return copy


def test_resumed_run_repeats_the_uninterrupted_one(tmp_path):
    steps = 4
    run_dir = run_launcher(tmp_path, "whole", "--set", "buffer.max_staleness=0", "--set", f"learner.steps={steps}",
                           "--set", "checkpoint.every_steps=2", "--set", "checkpoint.keep=3",
                           "--set", "actors.seeded_requests=true", "--set", "actors.probe=false")
    whole = losses(run_dir)
    assert sorted(whole) == [1, 2, 3, 4] and any(abs(v) > 1e-3 for v in whole.values())  # it learned something
    names = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    assert names == ["step_000002", "step_000004"]  # every 2 steps, and the last one
    with open(os.path.join(run_dir, "checkpoints", "step_000002", "meta.json")) as f:
        assert json.load(f)["version"] == 2

    # Resumed from step 2 on one rank, as it ran: steps 3 and 4 are the same.
    same = interrupted_copy(run_dir, tmp_path, "same", keep_step=2)
    proc = resume(same)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    resumed = losses(same)
    assert sorted(resumed) == [1, 2, 3, 4]  # the interrupted attempt's records after step 2 are gone
    for step in (3, 4):
        assert abs(resumed[step] - whole[step]) <= TOLERANCE, (step, resumed[step], whole[step])
    with open(os.path.join(same, "summary.json")) as f:
        summary = json.load(f)
    assert summary["resumed_from"].endswith("step_000002") and summary["ledger"]["unaccounted"] == 0
    with open(os.path.join(same, "roles", "learner.json")) as f:
        assert json.load(f)["resumed_from_step"] == 2
    with open(os.path.join(same, "roles", "actor0.json")) as f:
        assert json.load(f)["versions_received"] == [3, 4]  # it started with version 2's weights
    assert os.path.isdir(os.path.join(same, "logs.1"))  # the interrupted attempt's logs, kept aside

    # Resharded: two FSDP ranks load the one-rank checkpoint (torch.distributed.checkpoint reshards AdamW).
    sharded = interrupted_copy(run_dir, tmp_path, "sharded", keep_step=2)
    proc = resume(sharded, "--set", "learner.ranks=2", "--set", "learner.micro_batch_tokens=72")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    resumed = losses(sharded)
    for step in (3, 4):
        assert abs(resumed[step] - whole[step]) <= TOLERANCE, (step, resumed[step], whole[step])
    with open(os.path.join(sharded, "config.json")) as f:  # what a second --resume of it starts from
        assert json.load(f)["checkpoint"]["resume_overrides"] == ["learner.ranks=2", "learner.micro_batch_tokens=72"]

    # A finished run has nothing left to train unless told to go further.
    proc = resume(run_dir)
    assert proc.returncode == 2 and "--set learner.steps=N with N > 4" in proc.stderr
