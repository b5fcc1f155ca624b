"""launch.py sweep's grid and launch.py report's grouping and table (issue 15 items 1-2), on hand-built runs;
tests/integration/test_sweep.py runs a real sweep."""

import json
import os

import numpy as np
import pytest

from asyncor.configs.loader import load_config
from asyncor.studies.sweep import SweepError, done_before, expand, parse_grid, sweep
from asyncor.studies.report import accuracy_at, equal_wall_table, table, write_report
from asyncor.studies.runs import ReportError, RunData, RunGroup, find_runs, group_runs


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


def test_grid_points_whose_spelling_is_lossy_get_distinct_stable_names():
    """Issue 26 item 9: ["+"] and ["*"] both spell as `_____`; a hash of the exact values tells them apart, and
    a point keeps its name from one invocation to the next. Names that lose nothing stay as they were."""
    grid = ['task.operations=["+"],["*"]', "buffer.max_staleness=0,2"]
    runs = expand(grid, seeds=2, base_seed=0)
    names = [r.name for r in runs]
    assert len(set(names)) == len(runs) == 8
    assert all(n.startswith("task.operations-_____") for n in names)
    assert names == [r.name for r in expand(grid, seeds=2, base_seed=0)]
    plus, star = runs[0], runs[4]
    assert plus.grid["task.operations"] == '["+"]' and star.grid["task.operations"] == '["*"]'
    assert plus.name.split("__seed-")[0] != star.name.split("__seed-")[0]
    assert runs[1].name == runs[0].name.replace("__seed-0", "__seed-1")  # one point's seeds share the hash
    # A `__` inside a value makes the parts ambiguous: hashed too. Long values are cut, and hashed.
    a, b = expand(["a.b=x__c-y,x", "c.d=z,y__c-z"], seeds=1, base_seed=0)[1:3]
    assert a.name != b.name
    assert len(expand(["a.b=" + "x" * 300], seeds=1, base_seed=0)[0].name) < 150


def finished_run(run_dir, overrides, files=("launch_config.json", "config.json")):
    """A finished run in `run_dir` whose configs are the validated config of `overrides` (as the launcher writes
    them; a run from before launch_config.json existed has config.json alone)."""
    run_dir.mkdir(parents=True)
    for name in files:
        (run_dir / name).write_text(json.dumps(load_config(None, overrides).model_dump(mode="json")))
    (run_dir / "summary.json").write_text(json.dumps({"learner": {"steps": 3}, "wall_s": 10.0,
                                                      "staleness": {"mean": 0.5}}))


def test_a_run_is_done_before_only_when_it_holds_its_own_grid_point(tmp_path, capsys):
    """Issue 26 item 9: with ["+"] done, ["*"] used to get the same name and be skipped as "done before". Now
    each point has its own run directory, and a finished run only counts for the point whose values it holds."""
    grid = ['task.operations=["+"],["*"]']
    plus, star = expand(grid, seeds=1, base_seed=0)
    root = tmp_path / "ops"
    finished_run(root / plus.name, plus.overrides)
    finished_run(root / star.name, star.overrides)
    assert sweep(None, [], grid, 1, "ops", str(tmp_path), "local", []) == 0  # both done: no run starts
    out = capsys.readouterr().out
    assert f"{plus.name}: done before" in out and f"{star.name}: done before" in out
    manifest = json.loads((root / "sweep.json").read_text())
    assert [r["name"] for r in manifest["runs"]] == [plus.name, star.name]

    # A finished run of other values in a point's place (a name from an older sweep) is not that point.
    other = tmp_path / "legacy" / star.name
    finished_run(other, plus.overrides)
    point = {"task.operations": ["*"], "run.seed": 0}
    assert not done_before(str(other), point)
    assert done_before(str(root / star.name), point)
    assert not done_before(str(tmp_path / "nowhere"), point)
    older = tmp_path / "older"
    finished_run(older / "plus", plus.overrides, files=("config.json",))
    finished_run(older / "star", star.overrides, files=("config.json",))
    assert done_before(str(older / "star"), point) and not done_before(str(older / "plus"), point)


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


def test_groups_that_train_at_different_speeds_are_also_compared_at_equal_wall_time():
    """The slow group's last evaluation (t = 30 s) sets T; the fast one is read there, between its evaluations."""
    def run(name, evals, after):
        records = [{"ts": 1000.0 + t, "role": "eval", "step": v, "eval/accuracy": a} for t, v, a in evals]
        return RunData(name, "/nowhere", {"eval": {"before": 0.1, "after": after}}, {}, records)

    slow = RunGroup("slow", [run("s0", [(0, 0, 0.1), (30, 10, 0.5)], 0.5),
                             run("s1", [(0, 0, 0.1), (40, 10, 0.7)], 0.7)])
    fast = RunGroup("fast", [run("f0", [(0, 0, 0.1), (20, 30, 0.3), (60, 90, 0.9)], 0.9)])
    assert accuracy_at(fast.runs[0], 30.0) == pytest.approx((0.45, 45.0))  # a quarter of the way from 20 s to 60 s
    assert accuracy_at(slow.runs[0], 31.0) is None  # it never evaluated that late
    t, text = equal_wall_table([slow, fast])
    assert t == 30.0
    rows = text.splitlines()
    assert rows[0].startswith("| group | seeds | held-out at 30 s | version at 30 s |")
    assert rows[2].split(" | ")[2:4] == ["0.525 ± 0.035", "9 ± 2"]  # slow: 0.5, and 0.1 + 0.6 * 30 / 40 at v 7.5
    assert rows[3].split(" | ")[2:4] == ["0.450", "45"]
    assert equal_wall_table([slow]) is None
