"""The replay store: whole trajectory groups in arrival order, bounded.

Producer: the buffer service, as actors' groups are accepted. Consumer: the
learner's batch requests. `take` first drops every group that is already too
stale (counted), then hands out the oldest `n` fresh groups, or nothing if
fewer than `n` are ready (batches are never partial). A full store refuses new
groups (the actor is told and retries); nothing is evicted silently.
"""

from __future__ import annotations

from collections import deque

from buffer.protocol import TrajectoryGroup
from buffer.staleness import StalenessBudget


class ReplayStore:
    def __init__(self, max_groups: int):
        self.max_groups = max_groups
        self._groups: deque[TrajectoryGroup] = deque()
        self._seen: set[tuple[int, int]] = set()

    def __len__(self) -> int:
        return len(self._groups)

    def prompt_ids(self) -> list[int]:
        """The prompts of the stored groups, oldest first."""
        return [g.prompt_id for g in self._groups]

    def is_duplicate(self, group: TrajectoryGroup) -> bool:
        return (group.actor_id, group.seq) in self._seen

    def is_full(self) -> bool:
        return len(self._groups) >= self.max_groups

    def mark_seen(self, group: TrajectoryGroup) -> None:
        """Remember a group that was answered but not stored (rejection sampling), so a resend is a duplicate."""
        self._seen.add((group.actor_id, group.seq))

    def add(self, group: TrajectoryGroup) -> None:
        assert not self.is_duplicate(group) and not self.is_full()
        self._seen.add((group.actor_id, group.seq))
        self._groups.append(group)

    def drop_stale(self, budget: StalenessBudget) -> list[TrajectoryGroup]:
        fresh, stale = deque(), []
        for g in self._groups:
            (fresh if budget.is_fresh(g.min_version) else stale).append(g)
        self._groups = fresh
        return stale

    def take(self, n: int) -> list[TrajectoryGroup]:
        if len(self._groups) < n:
            return []
        return [self._groups.popleft() for _ in range(n)]
