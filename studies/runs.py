"""Finished runs as data for the studies (report, advise): each run's summary.json, flattened config.json and
metrics.jsonl, grouped by what their configs differ in, and the per-run figures the report and its plots use.

`find_runs(dirs)` takes run directories or sweep directories (a directory of runs); a directory that is
neither, or a run whose files do not parse, is a `ReportError` naming the file. A role's final figures
(roles/<role>.json) are read on demand by `RunData.role` and are optional: a run without them still reports.

Metrics renamed since older runs were made are read under their new name with a fall back to the old one
(`RENAMED`), so one report can hold runs from before and after the rename.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from asyncor.configs.loader import flatten
from asyncor.runtime.run_dir import RunDir
from asyncor.telemetry.metrics import read_metrics

IGNORED_PREFIXES = ("run.", "net.", "model.path", "checkpoint.resume_from", "checkpoint.resume_overrides")
RENAMED = {  # new name -> the name runs made before the rename carry (learner/mismatch.py)
    "learner/mismatch_abs_mean": "learner/behaviour_logprob_abs_diff",
    "learner/mismatch_kl": "learner/kl_behaviour",
}


class ReportError(ValueError):
    """A run or sweep directory that cannot be read (the message names the file)."""


@dataclass
class RunData:
    name: str
    path: str
    summary: dict
    config: dict  # flattened: "buffer.max_staleness" -> 2
    records: list[dict]
    group: str = ""
    _roles: dict = field(default_factory=dict, repr=False)

    @property
    def seed(self) -> int:
        return int(self.config.get("run.seed", 0))

    def series(self, key: str, role: str = "learner") -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric, in step order (records without the metric or a step skipped). A metric
        that was renamed (`RENAMED`) is read under its old name when the run has none under the new one."""
        pts = self._points(key, role)
        if not pts and key in RENAMED:
            pts = self._points(RENAMED[key], role)
        return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)

    def _points(self, key: str, role: str) -> list[tuple]:
        return sorted((r["step"], r[key]) for r in self.records
                      if r.get("role") == role and isinstance(r.get(key), (int, float)) and r.get("step") is not None)

    def role(self, name: str) -> dict:
        """roles/<name>.json, the role's final figures; {} when the run has none (or it does not parse)."""
        if name not in self._roles:
            try:
                with open(RunDir(self.path).role(name)) as f:
                    data = json.load(f)
            except (OSError, ValueError):
                data = {}
            self._roles[name] = data if isinstance(data, dict) else {}
        return self._roles[name]

    def eval_points(self) -> list[tuple[int, float, float]]:
        """(version, seconds since the run's first record, accuracy) of every held-out evaluation."""
        start = min((r["ts"] for r in self.records), default=0.0)
        return sorted((r["step"], r["ts"] - start, r["eval/accuracy"]) for r in self.records
                      if r.get("role") == "eval" and isinstance(r.get("eval/accuracy"), (int, float)))


@dataclass
class RunGroup:
    label: str
    runs: list[RunData] = field(default_factory=list)


def _load_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: {exc}") from None


def load_run(path: str) -> RunData:
    files = RunDir(path)
    records, _ = read_metrics(files.metrics)
    config = _load_json(files.config) if os.path.exists(files.config) else {}
    return RunData(os.path.basename(os.path.normpath(path)), path, _load_json(files.summary),
                   flatten(config), records)


def run_paths(dirs: list[str]) -> list[str]:
    """The finished runs' directories in `dirs`: each DIR is a run (summary.json) or holds runs (a sweep
    directory); nothing is read yet (report.py reads them one by one, counting)."""
    paths = []
    for d in dirs:
        if not os.path.isdir(d):
            raise ReportError(f"{d}: no such directory")
        if os.path.exists(RunDir(d).summary):
            paths.append(d)
            continue
        inside = sorted(e.path for e in os.scandir(d) if e.is_dir() and os.path.exists(RunDir(e.path).summary))
        if not inside:
            raise ReportError(f"{d}: neither a finished run (summary.json) nor a directory of finished runs")
        paths.extend(inside)
    return paths


def find_runs(dirs: list[str]) -> list[RunData]:
    """Finished runs in `dirs` (`run_paths`), read."""
    return [load_run(p) for p in run_paths(dirs)]


def group_runs(runs: list[RunData]) -> list[RunGroup]:
    """RunGroup by the config keys whose values differ between runs (seeds and run identity aside)."""
    keys = sorted({k for r in runs for k in r.config if not k.startswith(IGNORED_PREFIXES)})
    differing = [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1]
    groups: dict[str, RunGroup] = {}
    for r in runs:
        label = ", ".join(f"{k}={r.config.get(k)}" for k in differing) or "all runs"
        r.group = label
        groups.setdefault(label, RunGroup(label)).runs.append(r)
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


STALE_SUFFIX = re.compile(r"^learner/tokens_s(\d+)$")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def by_staleness(r: RunData, name: str) -> dict[int, float]:
    """{k: the mean over the run's learner steps of `<name>_s<k>`, each step weighted by its tokens of staleness
    k (`learner/tokens_s<k>`)}: the token-weighted mean of a per-token mean over the whole run, for every
    staleness k some step has (learner/mismatch.py). {} for a run without the per-staleness metrics."""
    sums: dict[int, list[float]] = {}
    for rec in r.records:
        if rec.get("role") != "learner":
            continue
        for key, tokens in rec.items():
            m = STALE_SUFFIX.match(key)
            value = rec.get(f"{name}_s{m.group(1)}") if m else None
            if m and _number(value) and _number(tokens) and tokens > 0:
                acc = sums.setdefault(int(m.group(1)), [0.0, 0.0])
                acc[0] += float(value) * tokens
                acc[1] += float(tokens)
    return {k: acc[0] / acc[1] for k, acc in sorted(sums.items())}


def length_bias(r: RunData) -> dict | None:
    """The buffer's "length_bias" (response lengths of trained against stale-dropped groups): from summary.json
    when the summary carries it, else from roles/buffer.json; None for a run without it."""
    bias = r.summary.get("length_bias") or r.role("buffer").get("length_bias")
    return bias if isinstance(bias, dict) and bias else None


def episodes(r: RunData) -> dict | None:
    """A multi-turn run's episode figures (summary.json "episodes": turns, environment time, staleness by turn
    kind); None for a single-turn run."""
    e = r.summary.get("episodes")
    return e if isinstance(e, dict) and e else None
