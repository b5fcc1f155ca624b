"""Metrics: one JSON object per line in the run's `metrics.jsonl`, shared by all roles.

Each record is `{"ts": unix_s, "role": ..., "step": int|None, "<role>/<metric>": value, ...}`.
Under `launch.py` (`launcher` set) a role sends each record to the launcher's
collector (telemetry/link.py -> launcher/collector.py), the file's only writer,
wherever the role runs.
Started by hand, a role appends with a single `write` on an O_APPEND
descriptor, so lines from different processes on one host never interleave.
The launcher tails the file for the live status view and the final summary.
"""

from __future__ import annotations

import json
import math
import os
import time


class MetricsWriter:
    def __init__(self, path: str, role: str, launcher: str | None = None):
        """`path`: the run's metrics.jsonl; `launcher`: the collector's address (`config.net.telemetry_address`),
        None writes the file."""
        self.role = role
        self.path = path
        self._link = self._fd = None
        if launcher:
            from asyncor.telemetry.link import link_to

            self._link = link_to(launcher)
        else:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(self, values: dict, step: int | None = None) -> None:
        prefix = self.role.rstrip("0123456789")  # actor3 -> actor (runtime/names.py)
        for key in values:
            # role/metric names keep dashboards and the summary unambiguous.
            assert "/" in key and key.split("/")[0] in (prefix, "reward", "sync", "eval"), key
        record = {"ts": time.time(), "role": self.role, "step": step}
        record.update({k: _jsonable(v) for k, v in values.items()})
        if self._link is not None:
            self._link.record(record)
        else:
            os.write(self._fd, (json.dumps(record) + "\n").encode())

    def close(self, timeout_s: float = 10.0) -> None:
        """Returns once every record is written (or `timeout_s` passed: the launcher is gone)."""
        if self._link is not None:
            self._link.flush(timeout_s)
        elif self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return v.item()
    return v


def read_metrics(path: str, offset: int = 0) -> tuple[list[dict], int]:
    """Records of the metrics file `path` appended since byte `offset`, and the new offset (only whole lines)."""
    if not os.path.exists(path):
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    records = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return records, offset + end

