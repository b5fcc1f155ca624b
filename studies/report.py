"""`launch.py report DIR...`: runs (or sweeps of runs) -> report.md with a table and PNG plots.

Runs are grouped by what their configs differ in (`run.*` including the seed, `net.*`, `model.path` and
`checkpoint.resume_from` aside: studies/runs.py `IGNORED_PREFIXES`), so the seeds of one grid point of a
sweep form one group and the table gives each group's mean +- std over its seeds. Everything comes from each
run's `summary.json`, `config.json` and `metrics.jsonl`; runs are read by studies/runs.py, plots drawn by
studies/plots.py:

  accuracy_vs_steps.png, accuracy_vs_wall.png   held-out accuracy (eval records: before, during, after RL)
  reward.png, entropy.png, kl_behaviour.png, logprob_gap.png   learner curves by policy version
  staleness.png                                 trained samples per staleness, per group
  time_split.png                                learner waiting-for-batch and actor idle fractions
  throughput.png                                learner and actor tokens/s

The page opens with what a reader would look for first (the best held-out accuracy and the fastest group),
then the table, then the plots.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from asyncor.studies import plots
from asyncor.studies.runs import (ReportError, RunGroup, actor_idle_fraction, find_runs, group_runs, held_out,
                                  tail_mean, wait_fraction)

COLUMNS = [  # (header, value of a run, format)
    ("held-out after", lambda r: held_out(r)[1], "{:.3f}"),
    ("gain", lambda r: None if None in held_out(r) else held_out(r)[1] - held_out(r)[0], "{:+.3f}"),
    ("reward (last 20 %)", lambda r: tail_mean(r.series("reward/mean")[1]), "{:.3f}"),
    ("entropy (last 20 %)", lambda r: tail_mean(r.series("learner/entropy")[1]), "{:.3f}"),
    ("staleness mean", lambda r: r.summary.get("staleness", {}).get("mean"), "{:.2f}"),
    ("learner waits", wait_fraction, "{:.0%}"),
    ("actors idle", actor_idle_fraction, "{:.0%}"),
    ("learner tok/s", lambda r: r.summary.get("learner", {}).get("tokens_per_s"), "{:.0f}"),
    ("actor tok/s", lambda r: r.summary.get("actors", {}).get("tokens_per_s"), "{:.0f}"),
    ("RL wall s", lambda r: r.summary.get("wall_s"), "{:.0f}"),
]


def stats(values: list) -> tuple[float, float, int] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def cell(values: list, fmt: str) -> str:
    s = stats(values)
    if s is None:
        return "–"
    mean, std, n = s
    if "%" in fmt:
        return fmt.format(mean) + (f" ± {std * 100:.0f} pp" if n > 1 else "")
    return fmt.format(mean) + (f" ± {fmt.format(std).lstrip('+')}" if n > 1 else "")


def table(groups: list[RunGroup]) -> str:
    head = "| group | seeds | " + " | ".join(h for h, _, _ in COLUMNS) + " |"
    rule = "|" + "---|" * (len(COLUMNS) + 2)
    rows = [f"| {g.label} | {len(g.runs)} | " + " | ".join(cell([f(r) for r in g.runs], fmt) for _, f, fmt in COLUMNS)
            + " |" for g in groups]
    return "\n".join([head, rule, *rows])


def _judge(spread: float, noise: float, n: int) -> str:
    if n < 2:
        return "one seed per group: no seed-to-seed spread to judge the difference against"
    if spread > 2 * noise:
        return f"more than twice the seed-to-seed standard deviation ({noise:.3f})"
    return f"within twice the seed-to-seed standard deviation ({noise:.3f}): not distinguishable"


def _extremes(groups: list[RunGroup], value) -> tuple | None:
    """((mean, std, n), group) of the highest and the lowest group mean of `value(run)`."""
    per = [(stats([value(r) for r in g.runs]), g) for g in groups]
    per = [(s, g) for s, g in per if s is not None]
    if not per:
        return None
    return max(per, key=lambda x: x[0][0]), min(per, key=lambda x: x[0][0])


def findings(groups: list[RunGroup]) -> list[str]:
    lines = []
    acc = _extremes(groups, lambda r: held_out(r)[1])
    if acc:
        ((mean, std, n), g), ((low, low_std, low_n), lg) = acc
        lines.append(f"* Best held-out accuracy after RL: **{g.label}**, {mean:.3f}"
                     + (f" ± {std:.3f} over {n} seeds" if n > 1 else "") + ".")
        if lg is not g:
            lines.append(f"* Lowest: {lg.label}, {low:.3f}; difference {mean - low:.3f}, "
                         f"{_judge(mean - low, max(std, low_std), min(n, low_n))}.")
    ent = _extremes(groups, lambda r: tail_mean(r.series("learner/entropy")[1]))
    if ent and ent[0][1] is not ent[1][1]:
        ((high, high_std, n), hg), ((low, low_std, low_n), lg) = ent
        lines.append(f"* Entropy over the last 20 % of steps: lowest in **{lg.label}** ({low:.3f}), highest in "
                     f"{hg.label} ({high:.3f}); difference {high - low:.3f}, "
                     f"{_judge(high - low, max(high_std, low_std), min(n, low_n))}.")
    wall = [(stats([r.summary.get("wall_s") for r in g.runs]), g) for g in groups]
    wall = [(s, g) for s, g in wall if s is not None]
    if len(wall) > 1:
        (secs, _, _), g = min(wall, key=lambda x: x[0][0])
        lines.append(f"* Fastest RL phase: **{g.label}**, {secs:.0f} s.")
    waits = [(stats([wait_fraction(r) for r in g.runs]), g) for g in groups]
    waits = [(s, g) for s, g in waits if s is not None]
    if waits:
        (w, _, _), g = max(waits, key=lambda x: x[0][0])
        lines.append(f"* The learner waited for batches most in {g.label} ({w:.0%} of its time): generation "
                     f"is the bottleneck there; more actors per learner would help it most.")
    return lines


def write_report(dirs: list[str], out: str | None = None) -> str:
    runs = find_runs(dirs)
    groups = group_runs(runs)
    out = out or (dirs[0] if len(dirs) == 1 else "report")
    os.makedirs(out, exist_ok=True)
    images = plots.draw_all(groups, out)
    lines = ["# asyncor report", "",
             f"{len(runs)} runs in {len(groups)} groups ({', '.join(dirs)}); groups differ in: "
             + (", ".join(sorted({k.split('=')[0] for g in groups for k in g.label.split(', ')}))
                if len(groups) > 1 else "nothing (one group)") + ".", "",
             "## What the runs show", "", *findings(groups), "",
             "## Table (mean ± standard deviation over seeds)", "", table(groups), "",
             "Held-out accuracy is avg@k on the held-out split after RL (`eval.before_and_after`); reward and entropy "
             "are the means over the last 20 % of steps; \"learner waits\" is its share of wall time spent waiting "
             "for a batch, \"actors idle\" the actors' share spent waiting for grants, weights or their outbox.", "",
             "## Plots", ""]
    for title, name in images:
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    lines += ["## Runs", "", "| run | group | seed | summary |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.group} | {r.seed} | {os.path.relpath(os.path.join(r.path, 'summary.json'), out)} |"
              for r in runs]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def command(args) -> int:
    """`launch.py report DIR...`."""
    try:
        path = write_report(args.dirs, args.out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
