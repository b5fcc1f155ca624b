"""`launch.py report DIR...`: runs (or sweeps of runs) -> report.md with a table and PNG plots.

Runs are grouped by what their configs differ in (run identity and addresses aside), so the seeds of one grid
point of a sweep form one group and the table gives each group's mean +- std over its seeds. Everything comes
from each run's `summary.json`, `config.json` and `metrics.jsonl`; plots are drawn by telemetry/plots.py:

  accuracy_vs_steps.png, accuracy_vs_wall.png   held-out accuracy (eval records: before, during, after RL)
  reward.png, entropy.png, kl_behaviour.png, logprob_gap.png   learner curves by policy version
  staleness.png                                 trained samples per staleness, per group
  time_split.png                                learner waiting-for-batch and actor idle fractions
  throughput.png                                learner and actor tokens/s

The page opens with what a reader would look for first (the best held-out accuracy and the fastest group),
then the table, then the plots.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

IGNORED_PREFIXES = ("run.", "net.", "model.path", "checkpoint.resume_from")


class ReportError(ValueError):
    pass


@dataclass
class RunData:
    name: str
    path: str
    summary: dict
    config: dict  # flattened: "buffer.max_staleness" -> 2
    records: list[dict]
    group: str = ""

    @property
    def seed(self) -> int:
        return int(self.config.get("run.seed", 0))

    def series(self, key: str, role: str = "learner") -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric, in step order (records without the metric or a step skipped)."""
        pts = sorted((r["step"], r[key]) for r in self.records
                     if r.get("role") == role and isinstance(r.get(key), (int, float)) and r.get("step") is not None)
        return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)

    def eval_points(self) -> list[tuple[int, float, float]]:
        """(version, seconds since the run's first record, accuracy) of every held-out evaluation."""
        start = min((r["ts"] for r in self.records), default=0.0)
        return sorted((r["step"], r["ts"] - start, r["eval/accuracy"]) for r in self.records
                      if r.get("role") == "eval" and isinstance(r.get("eval/accuracy"), (int, float)))


@dataclass
class Group:
    label: str
    runs: list[RunData] = field(default_factory=list)


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _load_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: {exc}") from None


def load_run(path: str) -> RunData:
    from asyncor.telemetry.metrics import read_metrics

    records, _ = read_metrics(path)
    config = _load_json(os.path.join(path, "config.json")) if os.path.exists(os.path.join(path, "config.json")) else {}
    return RunData(os.path.basename(os.path.normpath(path)), path, _load_json(os.path.join(path, "summary.json")),
                   flatten(config), records)


def find_runs(dirs: list[str]) -> list[RunData]:
    """Finished runs in `dirs`: each DIR is a run (summary.json) or holds runs (a sweep directory)."""
    runs = []
    for d in dirs:
        if not os.path.isdir(d):
            raise ReportError(f"{d}: no such directory")
        if os.path.exists(os.path.join(d, "summary.json")):
            runs.append(load_run(d))
            continue
        inside = sorted(e.path for e in os.scandir(d) if e.is_dir() and os.path.exists(os.path.join(e.path, "summary.json")))
        if not inside:
            raise ReportError(f"{d}: neither a finished run (summary.json) nor a directory of finished runs")
        runs.extend(load_run(p) for p in inside)
    return runs


def group_runs(runs: list[RunData]) -> list[Group]:
    """Group by the config keys whose values differ between runs (seeds and run identity aside)."""
    keys = sorted({k for r in runs for k in r.config if not k.startswith(IGNORED_PREFIXES)})
    differing = [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1]
    groups: dict[str, Group] = {}
    for r in runs:
        label = ", ".join(f"{k}={r.config.get(k)}" for k in differing) or "all runs"
        r.group = label
        groups.setdefault(label, Group(label)).runs.append(r)
    return list(groups.values())


# ----------------------------------------------------------------------------- figures per run


def held_out(r: RunData) -> tuple[float | None, float | None]:
    e = r.summary.get("eval") or {}
    return e.get("before"), e.get("after")


def tail_mean(values: np.ndarray, frac: float = 0.2) -> float | None:
    """Mean of the last `frac` of a curve (at least one point): where a run ended up."""
    if len(values) == 0:
        return None
    n = max(1, int(round(len(values) * frac)))
    return float(values[-n:].mean())


def wait_fraction(r: RunData) -> float | None:
    t = r.summary.get("time", {}).get("learner", {})
    return t.get("waiting_for_batch", 0.0) / t["wall"] if t.get("wall") else None


def actor_idle_fraction(r: RunData) -> float | None:
    """Share of each actor's wall time spent waiting (for a grant, for weights, for its outbox), averaged."""
    fracs = []
    for t in r.summary.get("time", {}).get("actors", []):
        if t.get("wall"):
            fracs.append(sum(v for k, v in t.items() if k.startswith("waiting")) / t["wall"])
    return float(np.mean(fracs)) if fracs else None


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


def table(groups: list[Group]) -> str:
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


def _extremes(groups: list[Group], value) -> tuple | None:
    """((mean, std, n), group) of the highest and the lowest group mean of `value(run)`."""
    per = [(stats([value(r) for r in g.runs]), g) for g in groups]
    per = [(s, g) for s, g in per if s is not None]
    if not per:
        return None
    return max(per, key=lambda x: x[0][0]), min(per, key=lambda x: x[0][0])


def findings(groups: list[Group]) -> list[str]:
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
    from asyncor.studies import plots

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
