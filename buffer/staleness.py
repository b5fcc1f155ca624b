"""The staleness bound η, enforced at admission and at consumption (DESIGN §3).

Admission (AReaL's rule): new prompts are granted only while
`accepted + in_flight < (η + v + 1) · groups_per_step`, so actors never produce
more data than the learner can train on within η versions. With a multi-stage
schedule the batch size changes with the step, so the bound is the number of
groups the learner consumes in its first η + v + 1 steps (`groups_through`). Groups dropped as
stale at consumption give their admission slot back (`accepted` counts groups
trained or still to be trained), so dropping never deadlocks generation.

Consumption: a group whose oldest token came from version `min_version` is
fresh at learner version `v` only if `v - min_version <= η`; a stale one is dropped
(`buffer.stale_policy` "drop") or trained anyway ("train"), buffer/batches.py.
Pure bookkeeping, no I/O: unit-tested directly.
"""

from __future__ import annotations

from typing import Callable


class StalenessBudget:
    def __init__(self, max_staleness: int, groups_per_step: int = 0,
                 groups_through: Callable[[int], int] | None = None):
        """`groups_through(k)`: groups consumed by the first k steps (default k · groups_per_step)."""
        self.max_staleness = max_staleness
        self.groups_through = groups_through or (lambda steps: steps * groups_per_step)
        self.version = 0
        self.accepted = 0
        self.in_flight = 0

    def capacity(self) -> int:
        limit = self.groups_through(self.max_staleness + self.version + 1)
        return max(0, limit - self.accepted - self.in_flight)

    def grant(self, wanted: int) -> int:
        n = min(wanted, self.capacity())
        self.in_flight += n
        return n

    def min_version_for_grant(self) -> int:
        """Oldest policy an actor may generate a newly granted prompt with."""
        return max(0, self.version - self.max_staleness)

    def on_group_accepted(self) -> None:
        assert self.in_flight > 0, "a group arrived that was never granted"
        self.in_flight -= 1
        self.accepted += 1

    def on_returned(self, n: int) -> None:
        """Grants given back unused (actor stopping, or its weights never arrived)."""
        assert 0 <= n <= self.in_flight
        self.in_flight -= n

    def on_dropped(self, n: int) -> None:
        self.accepted -= n

    def on_version(self, version: int) -> None:
        assert version >= self.version, (version, self.version)
        self.version = version

    def staleness(self, min_version: int) -> int:
        return self.version - min_version

    def is_fresh(self, min_version: int) -> bool:
        return self.staleness(min_version) <= self.max_staleness
