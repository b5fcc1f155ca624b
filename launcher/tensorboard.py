"""Every metric also as TensorBoard events: `tensorboard --logdir runs/` shows learner, buffer, actor and eval
curves of every run.

One event directory per role under `runs/<name>/tensorboard/<role>/` (learner, buffer, eval, actor0, ...), so
TensorBoard overlays the actors' curves of one tag (`actor/tokens_per_s`) and groups tags by their role
prefix. Scalars are logged at the record's step (the policy version) or, for records without one, at a
per-role count; `*_hist` metrics (counts per bin, e.g. `learner/staleness_hist`) become histograms.
Written by the launcher's telemetry collector as records arrive (`telemetry.tensorboard`); `export`
rebuilds the events of a run from its metrics.jsonl (runs started by hand, older runs, and `--resume`,
launcher/resume.py, which drops the steps after the checkpoint).

Every writer is a directory and a thread of torch's SummaryWriter: a sink given the run's `roles` (the
collector's) makes writers for those only and refuses a record of any other role (ValueError), so their
number is bounded by the run, never by the records.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection

import numpy as np
from asyncor.runtime.run_dir import RunDir


class TensorBoardSink:
    def __init__(self, run_dir: str, roles: Collection[str] | None = None):
        """`roles`: the only roles that get a writer (None: any, as `export` of a run's own metrics.jsonl)."""
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

        self._writer_type = SummaryWriter
        self.root = RunDir(run_dir).tensorboard
        self.roles = None if roles is None else frozenset(roles)
        self._writers: dict[str, object] = {}
        self._counts: dict[str, int] = {}

    def _writer(self, role: str):
        if self.roles is not None and role not in self.roles:
            raise ValueError(f"role {role!r} is not one of the run's {sorted(self.roles)}")
        if role not in self._writers:
            self._writers[role] = self._writer_type(log_dir=os.path.join(self.root, role), flush_secs=10)
        return self._writers[role]

    def write(self, record: dict) -> None:
        role = record["role"]
        step = record.get("step")
        if not isinstance(step, int):
            step = self._counts.get(role, 0)
            self._counts[role] = step + 1
        writer, wall = self._writer(role), float(record["ts"])
        for key, value in record.items():
            if key in ("ts", "role", "step") or value is None:
                continue
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, (int, float)):
                writer.add_scalar(key, value, step, walltime=wall)
            elif key.endswith("_hist") and is_counts(value):
                _add_counts(writer, key, value, step, wall)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def is_counts(value) -> bool:
    """A list of non-negative counts with at least one non-zero (records come off the wire: anything else is
    left out, never an error)."""
    return (isinstance(value, list) and 0 < len(value) <= 1 << 16
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c < 1e18 for c in value)
            and sum(value) > 0)


def _add_counts(writer, tag: str, counts: list, step: int, wall: float) -> None:
    """A histogram from counts per integer bin (bin i holds the value i)."""
    counts = np.asarray(counts, dtype=np.float64)
    values = np.arange(len(counts), dtype=np.float64)
    writer.add_histogram_raw(tag, min=float(values[counts > 0].min()), max=float(values[counts > 0].max()),
                             num=float(counts.sum()), sum=float((values * counts).sum()),
                             sum_squares=float((values ** 2 * counts).sum()),
                             bucket_limits=(values + 0.5).tolist(), bucket_counts=counts.tolist(), global_step=step,
                             walltime=wall)


def export(run_dir: str) -> str:
    """(Re)write a run's TensorBoard events from its metrics.jsonl; returns the event directory."""
    from asyncor.telemetry.metrics import read_metrics

    records, _ = read_metrics(RunDir(run_dir).metrics)
    shutil.rmtree(RunDir(run_dir).tensorboard, ignore_errors=True)
    sink = TensorBoardSink(run_dir)
    try:
        for record in records:
            sink.write(record)
    finally:
        sink.close()
    return sink.root
