"""launch.py sweep's grid and launch.py report's grouping and table (issue 15 items 1-2), on hand-built runs;
tests/integration/test_sweep.py runs a real sweep."""

import json
import os

import numpy as np
import pytest

from asyncor.studies.sweep import SweepError, expand, parse_grid
from asyncor.studies.report import table, write_report
from asyncor.studies.runs import ReportError, find_runs, group_runs


def test_the_grid_expands_in_order_with_seeds_innermost():
    runs = expand(["buffer.max_staleness=0,2", "actors.count=1,2"], seeds=2, base_seed=7)
    assert [r.name for r in runs[:3]] == ["buffer.max_staleness-0__actors.count-1__seed-7",
                                          "buffer.max_staleness-0__actors.count-1__seed-8",
                                          "buffer.max_staleness-0__actors.count-2__seed-7"]
    assert len(runs) == 8 and len({r.name for r in runs}) == 8
    assert runs[-1].overrides == ["buffer.max_staleness=2", "actors.count=2", "run.seed=8"]
    assert runs[-1].grid == {"buffer.max_staleness": "2", "actors.count": "2"}


def test_linked_keys_move_together():
    runs = expand(["algo.off_policy.correction+algo.off_policy.old_logprobs=none+behaviour,decoupled+recompute",
                   "buffer.max_staleness=0,4"], seeds=1, base_seed=0)
    assert [r.grid for r in runs] == [
        {"algo.off_policy.correction": c, "algo.off_policy.old_logprobs": o, "buffer.max_staleness": e}
        for c, o in [("none", "behaviour"), ("decoupled", "recompute")] for e in ["0", "4"]]
    assert runs[1].overrides == ["algo.off_policy.correction=none", "algo.off_policy.old_logprobs=behaviour",
                                 "buffer.max_staleness=4", "run.seed=0"]


@pytest.mark.parametrize("items, message", [
    (["buffer.max_staleness"], "expected KEY=V1,V2"),
    (["a.b+c.d=1+2,3"], "2 linked keys need 2 values"),
    (["a.b+a.b=1+2"], "given twice"),
    (["a.b=1", "c.d+a.b=1+2"], "given twice"),
    (["buffer.max_staleness=0,,2"], "non-empty and distinct"),
    (["a.b=1", "a.b=2"], "given twice"),
    (["run.seed=1,2"], "set by the sweep"),
])
def test_bad_grids_are_refused_naming_the_item(items, message):
    with pytest.raises(SweepError, match=message):
        parse_grid(items)


def fake_run(root, name, eta, seed, after, wall, reward, entropy=1.0):
    d = root / name
    d.mkdir(parents=True)
    config = {"run": {"name": name, "seed": seed}, "buffer": {"max_staleness": eta}, "net": {"sync_port": seed}}
    (d / "config.json").write_text(json.dumps(config))
    time = {"learner": {"waiting_for_batch": 2.0, "training": 6.0, "wall": 10.0},
            "actors": [{"generating": 9.0, "waiting_for_grant": 1.0, "wall": 10.0}]}
    summary = {"eval": {"before": 0.1, "after": after, "n": 8, "samples_per_problem": 1, "temperature": 1.0,
                        "greedy_before": 0.1, "greedy_after": after},
               "learner": {"steps": 4, "tokens_per_s": 100.0 * (seed + 1)}, "actors": {"tokens_per_s": 50.0},
               "staleness": {"mean": eta / 2, "max": eta, "hist": [3, 1, 1][:eta + 1]}, "wall_s": wall, "time": time}
    (d / "summary.json").write_text(json.dumps(summary))
    with open(d / "metrics.jsonl", "w") as f:
        for step in range(1, 6):
            f.write(json.dumps({"ts": 100.0 + step, "role": "learner", "step": step, "reward/mean": reward * step,
                                "learner/entropy": entropy / step}) + "\n")
        f.write(json.dumps({"ts": 99.0, "role": "eval", "step": 0, "eval/accuracy": 0.1}) + "\n")
        f.write(json.dumps({"ts": 107.0, "role": "eval", "step": 5, "eval/accuracy": after}) + "\n")


def test_report_groups_seeds_by_what_the_configs_differ_in_and_tabulates_mean_and_std(tmp_path):
    sweep = tmp_path / "sweep"
    fake_run(sweep, "eta0-s0", 0, 0, after=0.30, wall=40.0, reward=0.1)
    fake_run(sweep, "eta0-s1", 0, 1, after=0.40, wall=60.0, reward=0.1)
    fake_run(sweep, "eta2-s0", 2, 0, after=0.50, wall=30.0, reward=0.2, entropy=0.5)
    (sweep / "unfinished").mkdir()  # no summary.json: not a run yet
    runs = find_runs([str(sweep)])
    groups = group_runs(runs)
    assert [g.label for g in groups] == ["buffer.max_staleness=0", "buffer.max_staleness=2"]
    assert [len(g.runs) for g in groups] == [2, 1]
    rows = table(groups).splitlines()
    eta0 = rows[2].split(" | ")
    assert eta0[2] == "0.350 ± 0.071"  # held-out after: mean and sample std of 0.30, 0.40
    assert eta0[3] == "+0.250 ± 0.071"  # gain over 0.1
    assert eta0[-1].rstrip(" |") == "50 ± 14"  # RL wall s
    assert eta0[7] == "20% ± 0 pp"  # the learner waited 2 of 10 s in both seeds
    path = write_report([str(sweep)])
    text = open(path).read()
    assert "Best held-out accuracy after RL: **buffer.max_staleness=2**, 0.500" in text
    # Entropy over the last 20 % of 5 steps (step 5): 1/5 at η = 0, 0.5/5 at η = 2.
    assert ("Entropy over the last 20 % of steps: lowest in **buffer.max_staleness=2** (0.100), highest in "
            "buffer.max_staleness=0 (0.200)") in text
    for png in ("accuracy_vs_steps.png", "accuracy_vs_wall.png", "reward.png", "entropy.png", "staleness.png",
                "time_split.png", "throughput.png"):
        assert os.path.getsize(sweep / png) > 1000 and f"]({png})" in text
    assert np.isclose(float(rows[3].split(" | ")[4]), 0.2 * 5)  # reward over the last 20 % of 5 steps: step 5


def test_report_names_a_directory_without_runs(tmp_path):
    with pytest.raises(ReportError, match="neither a finished run"):
        find_runs([str(tmp_path)])
