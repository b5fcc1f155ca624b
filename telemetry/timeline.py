"""When a role was busy: (start, end, amount) intervals on the wall clock, for the ratio advisor.

    timeline = Timeline()
    t0 = time.time(); ...; timeline.add(t0, time.time(), tokens)
    timeline.as_list()   # [[start, end, amount], ...]

Roles write it into roles/<role>.json as "timeline": {"generating" (actors) or "training" (the learner):
as_list(), "dropped": n}. The actor records each engine step (amount: tokens generated), the learner each
training step (amount: response tokens). `studies/calibration.py` lines the roles' intervals up
(wall-clock time, so roles on one host or on NTP-synchronised hosts compare) to measure each role's rate
alone and how much it slows while another role on the same host is busy. Bounded: after `max_entries`
intervals the rest are counted (`dropped`), not kept (the calibration reads the start of a run, which is
what it needs).
"""

from __future__ import annotations


class Timeline:
    def __init__(self, max_entries: int = 20_000):
        self.max_entries = max_entries
        self.entries: list[list[float]] = []
        self.dropped = 0

    def add(self, start: float, end: float, amount: float) -> None:
        if len(self.entries) < self.max_entries:
            self.entries.append([round(start, 6), round(end, 6), amount])
        else:
            self.dropped += 1

    def as_list(self) -> list[list[float]]:
        return self.entries
