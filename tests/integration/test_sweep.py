"""Issue 15 items 1-3 on real runs: `launch.py sweep` runs a grid (each run a real `launch.py run` on the tiny
model), resumes by skipping finished runs, `launch.py report` turns it into report.md with plots whose table
holds the runs' own figures, and every run's metrics are readable as TensorBoard events."""

import json
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.integration.test_pipeline import ROOT

pytestmark = pytest.mark.slow


def sweep_args(tmp_path):
    sets = ["learner.steps=3", "learner.prompts_per_step=4", "actors.prompts_per_chunk=4", "actors.group_size=4",
            "eval.max_problems=16", "eval.samples_per_problem=1", "run.max_wall_s=300",
            f"run.cache_dir={os.path.join(ROOT, '.cache', 'asyncor-tests')}"]
    args = [sys.executable, "launch.py", "sweep", "--grid", "buffer.max_staleness=0,1", "--seeds", "1",
            "--name", "sw", "--output-dir", str(tmp_path)]
    for s in sets:
        args += ["--set", s]
    return args


def test_a_sweep_runs_its_grid_resumes_and_reports(tmp_path):
    first = subprocess.run(sweep_args(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    root = tmp_path / "sw"
    names = ["buffer.max_staleness-0__seed-0", "buffer.max_staleness-1__seed-0"]
    assert "[1/2] buffer.max_staleness-0__seed-0: done in" in first.stdout
    manifest = json.loads((root / "sweep.json").read_text())
    assert [r["name"] for r in manifest["runs"]] == names and {r["status"] for r in manifest["runs"]} == {"done"}
    summaries = [json.loads((root / n / "summary.json").read_text()) for n in names]
    assert [s["staleness"]["max_allowed"] for s in summaries] == [0, 1]

    # Resumable: finished runs are skipped (nothing runs again).
    again = subprocess.run(sweep_args(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count("done before") == 2, again.stdout + again.stderr

    report = subprocess.run([sys.executable, "launch.py", "report", str(root)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    text = (root / "report.md").read_text()
    for png in ("accuracy_vs_steps.png", "reward.png", "staleness.png", "time_split.png", "throughput.png"):
        assert (root / png).stat().st_size > 1000 and f"]({png})" in text
    rows = {}  # the main table's row of each group (the stale-length table further down has rows for them too)
    for line in text.splitlines():
        if line.startswith("| buffer.max_staleness="):
            rows.setdefault(line.split(" | ")[0].lstrip("| "), line.split(" | "))
    assert "## Stale-length bias" in text  # the buffer counts trained and stale-dropped response lengths
    for eta, s in zip((0, 1), summaries):
        row = rows[f"buffer.max_staleness={eta}"]
        assert row[2] == f"{s['eval']['after']:.3f}"  # one seed: the run's own figures, no spread
        assert row[-1].rstrip(" |") == f"{s['wall_s']:.0f}"
        assert row[6] == f"{s['staleness']['mean']:.2f}"

    # TensorBoard (telemetry.tensorboard, on by default): the learner's loss, as metrics.jsonl has it.
    run = root / names[1]
    losses = [(r["step"], r["learner/loss"]) for r in map(json.loads, open(run / "metrics.jsonl"))
              if r.get("role") == "learner" and "learner/loss" in r]
    acc = EventAccumulator(str(run / "tensorboard" / "learner"))
    acc.Reload()
    events = [(e.step, e.value) for e in acc.Scalars("learner/loss")]
    assert [s for s, _ in events] == [s for s, _ in losses] and len(events) == 3
    assert all(abs(a - b) < 1e-5 * max(1.0, abs(b)) for (_, a), (_, b) in zip(events, losses))
    assert os.path.isdir(run / "tensorboard" / "actor0") and os.path.isdir(run / "tensorboard" / "eval")

    # The ratio advisor (item 4) reads the real run's timelines and sets the sweep's runs against its prediction.
    advise = subprocess.run([sys.executable, "launch.py", "advise", "--from", str(run), "--check", str(root),
                             "--nodes", "2", "--gpus-per-node", "4", "--sim-steps", "6", "--out",
                             str(tmp_path / "advice.md")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert advise.returncode == 0, advise.stdout[-3000:] + advise.stderr[-3000:]
    advice = (tmp_path / "advice.md").read_text()
    assert "**Recommended:" in advice and advice.count("**recommended**") == 1
    split_rows = [line for line in advice.splitlines() if line.startswith("| ") and line.split(" | ")[0][2:].isdigit()]
    # Learner ranks on node 0 only (launcher/plan.py): 1..4 of its 4 devices, engines on the rest of both nodes.
    assert [tuple(line.split(" | ")[:2]) for line in split_rows] == [(f"| {k}", str(8 - k)) for k in range(1, 5)]
    learner = json.loads((run / "roles" / "learner.json").read_text())
    assert len(learner["timeline"]["training"]) == 3
    for name in names:  # predicted against measured, one row per run of the sweep
        assert f"| {name} | 1 |" in advice
