"""launch.py report's trainer-inference mismatch against staleness and its stale-length bias (issue 27 items 3-5,
report side), on hand-built runs: the per-staleness plot, the table's mismatch and correction/mask columns, the
"Stale-length bias" table, and runs from before the metrics (renamed or absent) still reporting."""

import json
import os

import numpy as np
import pytest

from asyncor.studies.report import length_table, table, write_report
from asyncor.studies.runs import by_staleness, find_runs, group_runs, length_bias

STEPS = range(1, 6)


def step_metrics(step: int, scale: float) -> dict:
    """One learner step: 100 tokens at staleness 0 every step, 300 at staleness 1 every step, 50 at staleness 2
    on odd steps; gaps growing with staleness, and a correction / M2PO mask share."""
    m = {"learner/tokens_s0": 100, "learner/mismatch_abs_mean_s0": 0.01 * scale,
         "learner/mismatch_abs_p99_s0": 0.1 * scale, "learner/mismatch_kl_s0": 0.001 * scale,
         "learner/correction_frac_s0": 0.0, "learner/objective_masked_frac_s0": 0.0,
         "learner/tokens_s1": 300, "learner/mismatch_abs_mean_s1": 0.02 * step * scale,
         "learner/mismatch_abs_p99_s1": 0.3 * scale, "learner/mismatch_kl_s1": 0.004 * scale,
         "learner/correction_frac_s1": 0.01 * step, "learner/objective_masked_frac_s1": 0.02}
    if step % 2:
        m.update({"learner/tokens_s2": 50, "learner/mismatch_abs_mean_s2": 0.2 * scale,
                  "learner/mismatch_abs_p99_s2": 1.0 * scale, "learner/mismatch_kl_s2": 0.05 * scale,
                  "learner/correction_frac_s2": 0.5, "learner/objective_masked_frac_s2": 0.1})
    m.update({"learner/mismatch_abs_mean": 0.01 * step * scale, "learner/mismatch_kl": 0.002 * step,
              "learner/correction_frac": 0.01 * step * scale, "learner/objective_masked_frac": 0.02 * scale})
    return m


BIAS = {"trained": {"responses": 400, "mean": 80.0, "p50": 70, "p90": 150, "max": 300, "hist": [0, 1]},
        "dropped": {"responses": 40, "mean": 120.0, "p50": 110, "p90": 250, "max": 400, "hist": [0, 2]},
        "long_drop_rate": 0.25, "short_drop_rate": 0.05}


def run(root, name, seed, correction, metrics, bias=None, bias_in="roles"):
    """A finished run whose learner logged `metrics(step)` per step; its buffer's length bias in
    roles/buffer.json (`bias_in="roles"`) or summary.json ("summary")."""
    d = root / name
    (d / "roles").mkdir(parents=True)
    config = {"run": {"name": name, "seed": seed}, "algo": {"off_policy": {"correction": correction}}}
    (d / "config.json").write_text(json.dumps(config))
    summary = {"learner": {"steps": 5, "tokens_per_s": 100.0}, "actors": {"tokens_per_s": 50.0},
               "staleness": {"mean": 0.8, "max": 2, "hist": [5, 3, 1]}, "wall_s": 30.0}
    if bias is not None and bias_in == "summary":
        summary["length_bias"] = bias
    (d / "summary.json").write_text(json.dumps(summary))
    buffer = {"staleness": summary["staleness"]}
    if bias is not None and bias_in == "roles":
        buffer["length_bias"] = bias
    (d / "roles" / "buffer.json").write_text(json.dumps(buffer))
    with open(d / "metrics.jsonl", "w") as f:
        for step in STEPS:
            f.write(json.dumps({"ts": 100.0 + step, "role": "learner", "step": step, "reward/mean": 0.1 * step,
                                "learner/entropy": 1.0 / step, **metrics(step)}) + "\n")
            f.write(json.dumps({"ts": 100.5 + step, "role": "buffer", "step": step,
                                "buffer/trained_len_mean": 80.0, "buffer/dropped_len_mean": 120.0}) + "\n")


def old_metrics(step: int) -> dict:
    """A run from before learner/mismatch.py: the two figures under their old names, nothing per staleness."""
    return {"learner/behaviour_logprob_abs_diff": 0.03 * step, "learner/kl_behaviour": 0.005 * step}


def columns(text_table: str) -> list[dict]:
    """The rows of a markdown table as {header: cell}."""
    rows = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in text_table.splitlines()]
    return [dict(zip(rows[0], r)) for r in rows[2:]]


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    run(root, "tis-s0", 0, "tis", lambda s: step_metrics(s, 1.0), BIAS, "roles")
    run(root, "tis-s1", 1, "tis", lambda s: step_metrics(s, 2.0),
        {**BIAS, "trained": {**BIAS["trained"], "mean": 100.0, "p90": 170},
         "dropped": {**BIAS["dropped"], "responses": 60, "mean": 140.0}, "long_drop_rate": 0.35}, "summary")
    run(root, "none-old", 0, "none", old_metrics)  # made before the rename, no length bias
    return root


def test_mismatch_by_staleness_is_the_token_weighted_mean_over_steps(sweep):
    runs = {r.name: r for r in find_runs([str(sweep)])}
    r = runs["tis-s0"]
    gap = by_staleness(r, "learner/mismatch_abs_mean")
    assert sorted(gap) == [0, 1, 2]
    assert gap[0] == pytest.approx(0.01)
    # Staleness 1: 300 tokens every step, gap 0.02 * step -> plain mean over steps 1..5 (equal weights) 0.06.
    assert gap[1] == pytest.approx(0.02 * np.mean(list(STEPS)))
    assert gap[2] == pytest.approx(0.2)  # only the odd steps have staleness-2 tokens
    # Staleness 1 of steps 1..5: correction 0.01 * step, 300 tokens each -> 0.03.
    assert by_staleness(r, "learner/correction_frac")[1] == pytest.approx(0.03)
    assert by_staleness(runs["none-old"], "learner/mismatch_abs_mean") == {}


def test_unequal_tokens_per_step_weight_the_mean(tmp_path):
    def metrics(step):
        return {"learner/tokens_s1": 10 * step, "learner/mismatch_abs_mean_s1": float(step)}
    run(tmp_path / "w", "r", 0, "none", metrics)
    (r,) = find_runs([str(tmp_path / "w")])
    steps = np.array(list(STEPS), float)
    assert by_staleness(r, "learner/mismatch_abs_mean")[1] == pytest.approx((steps * 10 * steps).sum()
                                                                            / (10 * steps).sum())


def test_report_has_the_mismatch_plot_columns_and_length_bias_table(sweep):
    groups = group_runs(find_runs([str(sweep)]))
    assert [g.label for g in groups] == ["algo.off_policy.correction=none", "algo.off_policy.correction=tis"]
    old, tis = columns(table(groups))
    head = r"mismatch \|Δlog p\| mean (last 20 %)"
    # Last 20 % of 5 steps = step 5: 0.05 (scale 1) and 0.10 (scale 2): mean 0.075, sample std 0.0354.
    assert tis[head] == "0.0750 ± 0.0354"
    assert old[head] == "0.1500"  # read under the old name: 0.03 * 5
    # Correction share at step 5: 5 % and 10 % -> 7.5 % ± 3.5 pp; M2PO mask 2 % and 4 % -> 3.0 % ± 1.4 pp.
    assert tis["correction share (last 20 %)"] == "7.5% ± 3.5 pp"
    assert tis["M2PO mask share (last 20 %)"] == "3.0% ± 1.4 pp"
    assert old["correction share (last 20 %)"] == "–" and old["M2PO mask share (last 20 %)"] == "–"
    assert tis["held-out after"] == "–" and tis["RL wall s"] == "30 ± 0"  # the other columns as before

    bias = columns(length_table(groups))
    assert len(bias) == 1  # the group without a length bias has no row
    (row,) = bias
    assert row["group"] == "algo.off_policy.correction=tis" and row["seeds"] == "2"
    assert row["trained mean len"] == "90.0 ± 14.1"  # 80 and 100
    assert row["trained p90 len"] == "160 ± 14"  # 150 and 170
    assert row["dropped mean len"] == "130.0 ± 14.1"
    assert row["dropped p90 len"] == "250 ± 0"
    assert row["responses dropped"] == "50 ± 14"  # 40 and 60
    assert row["long drop rate"] == "30.0% ± 7.1 pp" and row["short drop rate"] == "5.0% ± 0.0 pp"

    path = write_report([str(sweep)])
    text = open(path).read()
    for png in ("mismatch_by_staleness.png", "kl_behaviour.png", "logprob_gap.png"):
        assert os.path.getsize(sweep / png) > 1000 and f"]({png})" in text
    assert "token-weighted mean of the per-step 99th percentiles" in text
    assert "## Stale-length bias" in text and "| 90.0 ± 14.1 |" in text
    assert "| 0.0750 ± 0.0354 |" in text


def test_a_length_bias_without_drops_counts_zero_dropped(tmp_path):
    bias = {"trained": {"responses": 10, "mean": 50.0, "p50": 50, "p90": 60, "max": 70, "hist": []},
            "dropped": {}, "long_drop_rate": None, "short_drop_rate": None}
    run(tmp_path / "t", "train", 0, "tis", lambda s: {}, bias)
    runs = find_runs([str(tmp_path / "t")])
    assert length_bias(runs[0]) == bias
    (row,) = columns(length_table(group_runs(runs)))
    assert row["responses dropped"] == "0" and row["dropped mean len"] == "–" and row["long drop rate"] == "–"


def test_runs_without_the_new_metrics_still_report(tmp_path):
    root = tmp_path / "plain"
    run(root, "a", 0, "none", lambda s: {})
    run(root, "b", 0, "tis", lambda s: {})
    (root / "a" / "roles" / "buffer.json").unlink()  # and a run without roles/ at all
    path = write_report([str(root)])
    text = open(path).read()
    assert not os.path.exists(root / "mismatch_by_staleness.png") and "mismatch_by_staleness" not in text
    assert not os.path.exists(root / "kl_behaviour.png")
    assert "Stale-length bias" not in text and "Δlog p" not in table(group_runs(find_runs([str(root)])))
    assert "reward.png" in text


def test_the_new_name_wins_over_the_old_one(tmp_path):
    run(tmp_path / "both", "r", 0, "none", lambda s: {"learner/mismatch_kl": 1.0, "learner/kl_behaviour": 2.0})
    (r,) = find_runs([str(tmp_path / "both")])
    assert set(r.series("learner/mismatch_kl")[1]) == {1.0}
    assert set(r.series("learner/kl_behaviour")[1]) == {2.0}
