"""Where a role's wall time goes: seconds per named activity, measured with a context manager.

    budget = TimeBudget()
    with budget.measure("training"):
        ...
    budget.as_dict()   # {"training": 12.3, ..., "other": 0.4, "wall": 12.7}

"other" is the wall time no activity claimed (bookkeeping, logging). The
learner and the actors write `as_dict()` into their `roles/<role>.json` under
"time" (an actor's outbox thread also under "time_outbox"); the run summary
collects them (launcher/summary.py), so a run shows at a glance whether the
learner waited for data or the actors waited for grants or weights.
"""

from __future__ import annotations

import time
from contextlib import contextmanager


class TimeBudget:
    def __init__(self):
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def measure(self, activity: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(activity, time.perf_counter() - start)

    def add(self, activity: str, seconds: float) -> None:
        self.seconds[activity] = self.seconds.get(activity, 0.0) + seconds

    def busy_frac(self, *activities: str) -> float:
        """Share of the wall time so far spent in `activities`."""
        wall = time.perf_counter() - self.started
        return sum(self.seconds.get(a, 0.0) for a in activities) / wall if wall > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        return {**self.seconds, "other": max(wall - sum(self.seconds.values()), 0.0), "wall": wall}
