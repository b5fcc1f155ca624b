"""The replay store: whole trajectory groups in arrival order, bounded.

Producer: buffer/ingest.py, as actors' groups are accepted. Consumer: the
learner's batch requests (buffer/batches.py). Memory is bounded by `max_groups` and, for duplicate
detection, a window of recent sequence numbers per actor (`SeenSequences`). `drop_stale` removes and
returns every group already too stale (the caller counts them; batches.py calls it before every `take` under
`buffer.stale_policy` "drop", never under "train");
`take` hands out the oldest `n` groups, or nothing if fewer than `n` are stored (batches are never
partial). A full store refuses new groups (`is_full`: the actor is answered `full` and retries); nothing
is evicted silently.
"""

from __future__ import annotations

from collections import deque

from asyncor.wire.trajectory import TrajectoryGroup
from asyncor.buffer.staleness import StalenessBudget


class SeenSequences:
    """The (actor, seq) pairs already answered, to discard resends; bounded for runs of any length.

    Per actor it keeps the newest `window` sequence numbers; older ones are folded into a floor, and a
    resend at or below the floor counts as seen. An actor numbers its groups in order and resends a group
    only while it is among its few newest unanswered ones (actors/outbox.py), far inside the window."""

    def __init__(self, window: int):
        self.window = window
        self._recent: dict[int, set[int]] = {}
        self._floor: dict[int, int] = {}

    def __contains__(self, key: tuple[int, int]) -> bool:
        actor, seq = key
        return seq <= self._floor.get(actor, -1) or seq in self._recent.get(actor, ())

    def add(self, key: tuple[int, int]) -> None:
        actor, seq = key
        recent = self._recent.setdefault(actor, set())
        recent.add(seq)
        if len(recent) > self.window:  # fold the older half into the floor
            ordered = sorted(recent)
            cut = ordered[len(ordered) // 2]
            self._floor[actor] = max(self._floor.get(actor, -1), cut)
            self._recent[actor] = {q for q in ordered if q > cut}

    def __len__(self) -> int:
        return sum(len(r) for r in self._recent.values())

    def highest(self, actor: int) -> int:
        """The highest sequence number of `actor` counted as seen (-1: none)."""
        return max(self._recent.get(actor, ()), default=self._floor.get(actor, -1))


class ReplayStore:
    def __init__(self, max_groups: int):
        self.max_groups = max_groups
        self._groups: deque[TrajectoryGroup] = deque()
        self._seen = SeenSequences(window=max(1024, 4 * max_groups))

    def __len__(self) -> int:
        return len(self._groups)

    def prompt_ids(self) -> list[int]:
        """The prompts of the stored groups, oldest first."""
        return [g.prompt_id for g in self._groups]

    def highest_seq(self, actor_id: int) -> int:
        """The highest group number of `actor_id` seen (-1: none). A restarted actor numbers its groups well past
        it (buffer/admission.py), so a group of an earlier incarnation still in flight never shares a number
        with one of the new incarnation's."""
        return self._seen.highest(actor_id)

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
