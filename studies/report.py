"""`launch.py report DIR...`: runs (or sweeps of runs) -> report.md with tables and PNG plots.

Runs are grouped by what their configs differ in (`run.*` including the seed, `net.*`, `model.path` and
`checkpoint.resume_from` aside: studies/runs.py `IGNORED_PREFIXES`), so the seeds of one grid point of a
sweep form one group and the table gives each group's mean +- std over its seeds. Everything comes from each
run's `summary.json`, `config.json`, `metrics.jsonl` and, where summary.json lacks it, `roles/buffer.json`;
runs are read by studies/runs.py (one by one, with progress and an ETA: telemetry/progress.py), plots drawn
by studies/plots.py:

  accuracy_vs_steps.png, accuracy_vs_wall.png   held-out accuracy (eval records: before, during, after RL)
  reward.png, entropy.png                       learner curves by policy version
  kl_behaviour.png, logprob_gap.png             learner/mismatch_kl and learner/mismatch_abs_mean by version
                                                (older runs: learner/kl_behaviour, _behaviour_logprob_abs_diff)
  staleness.png                                 trained samples per staleness, per group
  mismatch_by_staleness.png                     |log π − log μ| mean and p99, KL, correction (and M2PO mask)
                                                share against the staleness of the tokens, per group
  time_split.png                                learner waiting-for-batch and actor idle fractions
  throughput.png                                learner and actor tokens/s

Tables: the main one (COLUMNS; the mismatch and correction/mask columns only when some run has them), and
"Stale-length bias" (LENGTH_COLUMNS: response lengths of trained against stale-dropped groups, the buffer's
"length_bias") when some run has it. A plot or table no run has data for is left out.

The page opens with what a reader would look for first (the best held-out accuracy and the fastest group),
then the tables, then the plots.

When the reported runs logged to an experiment tracker (their config.json has `telemetry.wandb.enabled` or
`telemetry.mlflow.enabled`), the report goes there too, as a run of its own (`log_to_trackers`): in W&B a run
of job_type "report" in the runs' group (offline: under `<out>/wandb/`), in MLflow a run named `report` tagged
with the group, in the runs' store; each with the plots and the tables (docs/trackers.md). A tracker that
fails is reported on stderr; the report itself is written first and stands.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np

from asyncor.studies import plots
from asyncor.studies.runs import (ReportError, RunGroup, actor_idle_fraction, group_runs, held_out, episodes,
                                  length_bias, load_run, run_paths, tail_mean, wait_fraction)
from asyncor.telemetry import log as tlog
from asyncor.telemetry.progress import Progress

MISMATCH = r"mismatch \|Δlog p\| mean (last 20 %)"  # pipes escaped: they would split a markdown table's cell
COLUMNS = [  # (header, value of a run, format)
    ("held-out after", lambda r: held_out(r)[1], "{:.3f}"),
    ("gain", lambda r: None if None in held_out(r) else held_out(r)[1] - held_out(r)[0], "{:+.3f}"),
    ("reward (last 20 %)", lambda r: tail_mean(r.series("reward/mean")[1]), "{:.3f}"),
    ("entropy (last 20 %)", lambda r: tail_mean(r.series("learner/entropy")[1]), "{:.3f}"),
    ("staleness mean", lambda r: r.summary.get("staleness", {}).get("mean"), "{:.2f}"),
    (MISMATCH, lambda r: tail_mean(r.series("learner/mismatch_abs_mean")[1]), "{:.4f}"),
    ("correction share (last 20 %)", lambda r: tail_mean(r.series("learner/correction_frac")[1]), "{:.1%}"),
    ("M2PO mask share (last 20 %)", lambda r: tail_mean(r.series("learner/objective_masked_frac")[1]), "{:.1%}"),
    ("learner waits", wait_fraction, "{:.0%}"),
    ("actors idle", actor_idle_fraction, "{:.0%}"),
    ("learner tok/s", lambda r: r.summary.get("learner", {}).get("tokens_per_s"), "{:.0f}"),
    ("actor tok/s", lambda r: r.summary.get("actors", {}).get("tokens_per_s"), "{:.0f}"),
    ("RL wall s", lambda r: r.summary.get("wall_s"), "{:.0f}"),
]
# Columns of figures older runs (or runs without a correction or M2PO) do not log: left out when no run has them.
OPTIONAL = {MISMATCH, "correction share (last 20 %)", "M2PO mask share (last 20 %)"}


def _bias(key: str, part: str | None = None):
    """length_bias[part][key] (length_bias[key] without a part) of a run; None for a run without it."""
    def get(r):
        bias = length_bias(r)
        if bias is None:
            return None
        figures = bias if part is None else (bias.get(part) or {})
        if key == "responses":  # a run with the length bias but nothing dropped yet dropped 0 responses
            return figures.get(key, 0)
        return figures.get(key)
    return get


LENGTH_COLUMNS = [  # the buffer's "length_bias" (buffer/state.py), response lengths in tokens
    ("trained mean len", _bias("mean", "trained"), "{:.1f}"),
    ("trained p90 len", _bias("p90", "trained"), "{:.0f}"),
    ("dropped mean len", _bias("mean", "dropped"), "{:.1f}"),
    ("dropped p90 len", _bias("p90", "dropped"), "{:.0f}"),
    ("responses dropped", _bias("responses", "dropped"), "{:.0f}"),
    ("long drop rate", _bias("long_drop_rate"), "{:.1%}"),
    ("short drop rate", _bias("short_drop_rate"), "{:.1%}"),
]


def _episode(key: str, kind: str | None = None):
    """summary.json episodes[key] (episodes.staleness[kind][key] with a kind) of a run; None without it."""
    def get(r):
        e = episodes(r)
        if e is None:
            return None
        return e.get(key) if kind is None else (e.get("staleness", {}).get(kind) or {}).get(key)
    return get


EPISODE_COLUMNS = [  # multi-turn runs: the actors' episode tallies and the buffer's staleness by turn kind
    ("turns per episode", _episode("turns_mean"), "{:.2f}"),
    ("policy tokens per turn", _episode("tokens_per_turn"), "{:.1f}"),
    ("env ms per call", lambda r: None if _episode("env_s_per_step")(r) is None
     else 1000 * _episode("env_s_per_step")(r), "{:.1f}"),
    ("single-turn groups staleness", _episode("mean", "single"), "{:.2f}"),
    ("multi-turn groups staleness", _episode("mean", "multi"), "{:.2f}"),
    ("multi-turn groups trained", _episode("groups", "multi"), "{:.0f}"),
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
        digits = re.search(r"\.(\d+)%", fmt)  # the spread in percentage points, to the mean's precision
        return fmt.format(mean) + (f" ± {std * 100:.{digits.group(1) if digits else 0}f} pp" if n > 1 else "")
    return fmt.format(mean) + (f" ± {fmt.format(std).lstrip('+')}" if n > 1 else "")


def table(groups: list[RunGroup], columns: list | None = None) -> str:
    """Markdown table, a row per group: each column's mean ± std over the group's seeds. Of `columns` (default
    COLUMNS) those in OPTIONAL that no run has a value for are left out."""
    columns = [(h, f, fmt) for h, f, fmt in (COLUMNS if columns is None else columns)
               if h not in OPTIONAL or any(f(r) is not None for g in groups for r in g.runs)]
    head = "| group | seeds | " + " | ".join(h for h, _, _ in columns) + " |"
    rule = "|" + "---|" * (len(columns) + 2)
    rows = [f"| {g.label} | {len(g.runs)} | " + " | ".join(cell([f(r) for r in g.runs], fmt) for _, f, fmt in columns)
            + " |" for g in groups]
    return "\n".join([head, rule, *rows])


def accuracy_at(r, seconds: float) -> tuple[float, float] | None:
    """(held-out accuracy, policy version) at `seconds` after the run's first record, linearly interpolated between
    its held-out evaluations; None when the run has none that late."""
    points = r.eval_points()
    if not points or points[-1][1] < seconds:
        return None
    versions, times, accuracies = zip(*points)
    return float(np.interp(seconds, times, accuracies)), float(np.interp(seconds, times, versions))


def equal_wall_table(groups: list[RunGroup]) -> tuple[float, str] | None:
    """(T, a markdown table of each group's held-out accuracy and version at T): T is the earliest time by which
    every run had its last held-out evaluation, so each group is read at the same wall time. None with fewer than
    two groups or without evaluations during the runs."""
    ends = [r.eval_points()[-1][1] for g in groups for r in g.runs if len(r.eval_points()) > 1]
    if len(groups) < 2 or len(ends) < sum(len(g.runs) for g in groups):
        return None
    t = min(ends)
    columns = [(f"held-out at {t:.0f} s", lambda r: (accuracy_at(r, t) or (None,))[0], "{:.3f}"),
               (f"version at {t:.0f} s", lambda r: (accuracy_at(r, t) or (None, None))[1], "{:.0f}"),
               ("held-out after", lambda r: held_out(r)[1], "{:.3f}"),
               ("last eval s", lambda r: r.eval_points()[-1][1], "{:.0f}")]
    return t, table(groups, columns)


def length_table(groups: list[RunGroup]) -> str | None:
    """The stale-length bias per group (the groups with some run that has it); None when no run has it."""
    having = [RunGroup(g.label, [r for r in g.runs if length_bias(r) is not None]) for g in groups]
    having = [g for g in having if g.runs]  # "seeds" counts the runs that have it
    return table(having, LENGTH_COLUMNS) if having else None


def episode_table(groups: list[RunGroup]) -> str | None:
    """Turns, environment time and staleness by turn kind per group (multi-turn runs); None when no run has it."""
    having = [RunGroup(g.label, [r for r in g.runs if episodes(r) is not None]) for g in groups]
    having = [g for g in having if g.runs]
    return table(having, EPISODE_COLUMNS) if having else None


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


def read_runs(dirs: list[str]) -> list:
    """The finished runs in `dirs` (studies/runs.py), read one by one with progress (runs read, ETA): a long
    run's metrics.jsonl takes a while."""
    paths = run_paths(dirs)
    runs = []
    with Progress("report: reading runs", len(paths), log=tlog.get("report"), unit="runs") as progress:
        for path in paths:
            runs.append(load_run(path))
            progress.update()
    return runs


def write_report(dirs: list[str], out: str | None = None) -> str:
    runs = read_runs(dirs)
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
             "for a batch, \"actors idle\" the actors' share spent waiting for grants, weights or their outbox. "
             "\"mismatch |Δlog p| mean\" is |log π − log μ| per token between the learner's policy before each "
             "step and the behaviour policy that generated the tokens (learner/mismatch_abs_mean), the correction "
             "share the share of tokens the rollout correction masked or truncated (learner/correction_frac), the "
             "M2PO mask share the share the objective's own mask dropped (learner/objective_masked_frac); each is "
             "the mean over the last 20 % of steps, and left out when no run logs it.", ""]
    tables = {"main": table(groups)}  # also logged to the runs' experiment trackers, if any
    equal = equal_wall_table(groups)
    if equal:
        tables["equal_wall_time"] = equal[1]
        lines += ["## At equal wall time (mean ± standard deviation over seeds)", "", equal[1], "",
                  f"Each run's held-out accuracy (avg@k) and policy version {equal[0]:.0f} s after its first record "
                  "(the evaluation before RL), interpolated between its held-out evaluations (`eval.every_steps`; "
                  "their own time included): the time by which every run had evaluated for the last time. Groups "
                  "that train at different speeds are compared at the same cost in wall time here, and after the "
                  "same number of steps in the table above.", ""]
    lengths = length_table(groups)
    if lengths:
        tables["stale_length_bias"] = lengths
        lines += ["## Stale-length bias (mean ± standard deviation over seeds)", "", lengths, "",
                  "Response lengths in tokens of the groups the buffer handed to the learner (\"trained\") and of "
                  "those it dropped as staler than `buffer.max_staleness` (\"dropped\"; rejection-sampled groups "
                  "are not counted; with `buffer.stale_policy=train` nothing is dropped). Long responses take "
                  "longer to generate, so they are more often stale: the long drop rate is the share of responses "
                  "at or above the 90th percentile length of all (trained and dropped) responses that were "
                  "dropped, the short drop rate the same share of the shorter ones. \"seeds\" counts the runs "
                  "that recorded it.", ""]
    turns = episode_table(groups)
    if turns:
        tables["episodes"] = turns
        lines += ["## Episodes (multi-turn runs; mean ± standard deviation over seeds)", "", turns, "",
                  "Turns per finished episode and policy tokens per turn (actors), environment time per call "
                  "(an episode's opening or a step: a tool run, an HTTP request, waiting included), and the mean staleness of trained groups whose "
                  "episodes all took one turn against groups with an episode of several (buffer; "
                  "docs/environments.md).",
                  ""]
    lines += ["## Plots", ""]
    for title, name in images:
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
        if name in plots.CAPTIONS:
            lines += [plots.CAPTIONS[name], ""]
    lines += ["## Runs", "", "| run | group | seed | summary |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.group} | {r.seed} | {os.path.relpath(os.path.join(r.path, 'summary.json'), out)} |"
              for r in runs]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    log_to_trackers(runs, out, [(title, os.path.join(out, name)) for title, name in images], tables, path)
    return path


def markdown_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of one of `table`'s markdown tables (escaped pipes `\\|` stay inside their cell)."""
    lines = [line.strip().strip("|") for line in text.splitlines() if line.strip()]
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)] for line in lines]
    return cells[0], cells[2:]  # cells[1] is the |---| rule


def log_to_trackers(runs, out: str, images: list[tuple[str, str]], tables: dict[str, str], report_md: str) -> None:
    """The report as a W&B and / or MLflow run, for the trackers the runs logged to (the first such run's
    settings; the group when the runs share one). A failure is said on stderr, never raised."""
    from asyncor.configs.schema import MlflowConfig, WandbConfig

    names = [r.name for r in runs]
    structured = {name: markdown_rows(text) for name, text in tables.items()}
    for tracker, section in (("wandb", WandbConfig), ("mlflow", MlflowConfig)):
        prefix = f"telemetry.{tracker}."
        enabled = [r for r in runs if r.config.get(prefix + "enabled") is True]
        if not enabled:
            continue
        groups = {r.config.get(prefix + "group") for r in enabled} - {None}
        group = groups.pop() if len(groups) == 1 else None
        try:
            settings = section.model_validate({k[len(prefix):]: v for k, v in enabled[0].config.items()
                                               if k.startswith(prefix)})
            if tracker == "wandb":
                from asyncor.launcher.wandb_sink import log_report

                run_id = log_report(settings, out, group, images, structured, report_md, names)
            else:
                from asyncor.launcher.mlflow_sink import log_report

                output_dir = os.path.dirname(os.path.abspath(enabled[0].path))  # the runs' own store by default
                run_id = log_report(settings, output_dir, group, images, structured, report_md, names)
            print(f"report logged to {tracker} (run {run_id}{f', group {group}' if group else ''})")
        except Exception as exc:  # noqa: BLE001 - the report is written; a tracker is an extra
            print(f"warning: the report could not be logged to {tracker}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)


def command(args) -> int:
    """`launch.py report DIR...`."""
    try:
        path = write_report(args.dirs, args.out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
