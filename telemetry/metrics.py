"""Metrics: one JSON object per line in `runs/<name>/metrics.jsonl`, shared by all roles.

Each record is `{"ts": unix_s, "role": ..., "step": int|None, "<role>/<metric>": value, ...}`.
Roles append with a single `write` on an O_APPEND descriptor, so lines from
different processes never interleave. The launcher tails the file for the live
status view and the final summary; TensorBoard export reads the same lines.
"""

from __future__ import annotations

import json
import math
import os
import time


class MetricsWriter:
    def __init__(self, run_dir: str, role: str):
        self.role = role
        self.path = os.path.join(run_dir, "metrics.jsonl")
        os.makedirs(run_dir, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(self, values: dict, step: int | None = None) -> None:
        prefix = self.role.split(":")[0]
        for key in values:
            # role/metric names keep dashboards and the summary unambiguous.
            assert "/" in key and key.split("/")[0] in (prefix, "reward", "sync", "eval"), key
        record = {"ts": time.time(), "role": self.role, "step": step}
        record.update({k: _jsonable(v) for k, v in values.items()})
        os.write(self._fd, (json.dumps(record) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return v.item()
    return v


def read_metrics(run_dir: str, offset: int = 0) -> tuple[list[dict], int]:
    """Records appended since byte `offset`, and the new offset (only whole lines)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    records = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return records, offset + end

