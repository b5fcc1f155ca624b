"""What the trackers (launcher/wandb_sink.py, launcher/mlflow_sink.py) write, the same for both: records mapped
to tracker metrics, a summary flattened to named leaves, and the tracker run ids of `<run dir>/trackers.json`.
Apart from the thread that drives them (launcher/tracker_thread.py), which imports the sinks.

A record becomes tracker metrics through `RecordMapper` (the same for every tracker): learner, buffer and
eval metrics keep their names; an actor<i> record's `actor/x` becomes `actor<i>/x` and its other metrics
(`sync/x`) `actor<i>/sync/x`, so actors never share a series; the step is the record's (the policy version)
or, without one, a count per role as TensorBoard's (launcher/tensorboard.py). Numbers (booleans as 0/1) are
kept, `*_hist` counts per integer bin kept as lists for the sinks that draw histograms; anything else (text,
null, non-finite numbers, names a tracker refuses) is skipped. The tracker run ids go to
`<run dir>/trackers.json` so a resumed run (`launch.py run --resume`) continues the same tracker runs.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading

from asyncor.launcher.tensorboard import is_counts
from asyncor.runtime.names import kind
from asyncor.runtime.run_dir import RunDir

KEY = re.compile(r"^[A-Za-z0-9_./:-]{1,250}$")  # names both trackers take (MLflow's rule, 250 characters)


class RecordMapper:
    """Metrics records -> (step, {tracker metric name: number or histogram counts}), the same for every tracker."""

    def __init__(self):
        self._counts: dict[str, int] = {}
        self._owner: dict[str, str] = {}  # a name's first role: a later role logging it too gets its own name

    def map(self, record: dict) -> tuple[str, int, dict]:
        role = record["role"]
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            step = self._counts.get(role, 0)
            self._counts[role] = step + 1
        actor = kind(role) == "actor" and role != "actor"
        out = {}
        for key, value in record.items():
            if key in ("ts", "role", "step") or value is None:
                continue
            if actor:
                key = f"{role}/{key.removeprefix('actor/')}" if key.startswith("actor/") else f"{role}/{key}"
            owner = self._owner.setdefault(key, role)
            if owner != role:  # e.g. an eval/ metric from both the learner and the eval role
                key = f"{role}/{key}"
            if not KEY.match(key):
                continue
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, (int, float)):
                try:
                    value = float(value)
                except OverflowError:
                    continue
                if math.isfinite(value):
                    out[key] = value
            elif key.endswith("_hist") and is_counts(value):
                out[key] = list(value)
        return role, step, out


def flat_leaves(tree, prefix: str = "", limit: int = 2000) -> dict:
    """A summary's numbers and strings as dotted names (`learner.steps`, `time.actors.0.generating`); lists of
    numbers (histograms) are left out, and at most `limit` leaves are kept."""
    out: dict = {}

    def walk(node, path):
        if len(out) >= limit:
            return
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list):
            if all(isinstance(v, dict) for v in node):
                for i, v in enumerate(node):
                    walk(v, f"{path}.{i}")
        elif isinstance(node, bool):
            out[path] = int(node)
        elif isinstance(node, (int, float)) and math.isfinite(node):
            out[path] = node
        elif isinstance(node, str):
            out[path] = node

    walk(tree, prefix)
    return out


_ids_lock = threading.Lock()


def load_ids(run_dir: str) -> dict:
    """`<run dir>/trackers.json`: each tracker's run ids ({} when none, or unreadable)."""
    try:
        with open(RunDir(run_dir).trackers) as f:
            ids = json.load(f)
    except (OSError, ValueError):
        return {}
    return ids if isinstance(ids, dict) else {}


def save_ids(run_dir: str, name: str, ids: dict) -> None:
    """Record tracker `name`'s run ids (temp + rename; the trackers' threads share the file)."""
    path = RunDir(run_dir).trackers
    with _ids_lock:
        all_ids = {**load_ids(run_dir), name: ids}
        os.makedirs(run_dir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(all_ids, f, indent=2)
        os.replace(path + ".tmp", path)
