"""The live status view: the latest figures of every role, read from metrics.jsonl.

On a terminal it is a rich table refreshed in place; otherwise (CI, pipes) one
plain line every `plain_every_s`.

Who produces, who consumes: the launcher's collector thread appends records
to metrics.jsonl (launcher/collector.py); the launcher's watch loop calls
`poll` after each look at the roles (launcher/run.py), which reads the whole
lines appended since the last call and keeps the latest value of every
numeric metric (actors' tokens/s summed over actors). What blocks: nothing
but reading the file; a torn last line is left for the next poll. What is
dropped: every record but the latest value of each metric, and values that
are not numbers. No deadlines: it waits on nothing. On a terminal, rich's
`Live` redraws the table from its own thread, twice a second.
"""

from __future__ import annotations

import sys
import time

from asyncor.telemetry.metrics import read_metrics
from asyncor.runtime.run_dir import RunDir

FIELDS = [
    ("step", "learner/step", "{:.0f}"),
    ("version", "learner/version", "{:.0f}"),
    ("reward", "reward/mean", "{:.3f}"),
    ("buffer", "buffer/size", "{:.0f}"),
    ("in flight", "buffer/in_flight", "{:.0f}"),
    ("staleness mean", "learner/staleness_mean", "{:.2f}"),
    ("staleness max", "learner/staleness_max", "{:.0f}"),
    ("dropped stale", "buffer/dropped_stale", "{:.0f}"),
    ("actor tok/s", "actor/tokens_per_s", "{:.0f}"),
    ("wait for batch", "learner/wait_for_batch_frac", "{:.0%}"),
    ("eval acc", "eval/accuracy", "{:.3f}"),
]


class StatusView:
    def __init__(self, run_dir: str, total_steps: int, plain_every_s: float = 10.0):
        self.run_dir = run_dir
        self.total_steps = total_steps
        self.offset = 0
        self.latest: dict[str, float] = {}
        self.actor_rate: dict[str, float] = {}
        self.started = time.monotonic()
        self.plain_every_s = plain_every_s
        self.last_plain = 0.0
        self.live = None
        if sys.stdout.isatty():
            from rich.live import Live

            self.live = Live(self._table(), refresh_per_second=2, transient=False)
            self.live.start()

    def poll(self) -> None:
        records, self.offset = read_metrics(RunDir(self.run_dir).metrics, self.offset)
        for r in records:
            for key, value in r.items():
                if "/" in key and isinstance(value, (int, float)):
                    self.latest[key] = value
            if r.get("actor/tokens_per_s") is not None:
                self.actor_rate[r["role"]] = r["actor/tokens_per_s"]
        if self.actor_rate:
            self.latest["actor/tokens_per_s"] = sum(self.actor_rate.values())
        if self.live is not None:
            self.live.update(self._table())
        elif time.monotonic() - self.last_plain > self.plain_every_s:
            self.last_plain = time.monotonic()
            print(self.line(), flush=True)

    def line(self) -> str:
        parts = [f"[{time.monotonic() - self.started:5.0f}s] step {self.latest.get('learner/step', 0):.0f}/{self.total_steps}"]
        for label, key, fmt in FIELDS[1:]:
            if key in self.latest:
                parts.append(f"{label} {fmt.format(self.latest[key])}")
        return " | ".join(parts)

    def _table(self):
        from rich.table import Table

        table = Table(title=f"asyncor  {self.run_dir}  ({time.monotonic() - self.started:.0f}s)")
        for label, _, _ in FIELDS:
            table.add_column(label, justify="right")
        row = []
        for label, key, fmt in FIELDS:
            v = self.latest.get(key)
            text = "-" if v is None else fmt.format(v)
            if key == "learner/step" and v is not None:
                text += f"/{self.total_steps}"
            row.append(text)
        table.add_row(*row)
        return table

    def close(self) -> None:
        if self.live is not None:
            self.poll()
            self.live.stop()
