"""Batches: the learner's requests, answered with the oldest stored groups.

A batch request (the learner asks for its current stage's `prompts_per_step` groups) is long-polled: it is
answered as soon as that many groups exist (fresh enough ones, under "drop" below), or with `wait` after
`LONG_POLL_S` (the learner asks again). One request is pending at a time; a newer one replaces it.

Stale groups (older than `buffer.max_staleness`, η) follow `buffer.stale_policy`. "drop" (the default): before
a batch is taken every such group is dropped and counted (`buffer/dropped_stale`; its responses
`buffer/dropped_stale_responses`); its admission slot goes back, so dropping never stalls generation. "train":
nothing is dropped; the oldest groups are handed out whatever their age, each with its staleness as it is,
above η or not (the learner accepts that under this policy, and `algo.correction` handles it). Admission bounds
generation ahead by η under both (buffer/staleness.py). The length of every response trained and dropped as
stale is counted (buffer/state.py: the length bias of dropping) and logged with every batch over the run so
far: `buffer/trained_len_mean` and, once a group was dropped, `buffer/dropped_len_mean`.

With rejection sampling in shrink mode (the original code) the all-equal groups of a taken batch are dropped
from it; a batch left with nothing is discarded, its slots go back, and the request keeps waiting for the next
groups. The batch carries the staleness of each group and the tally of the groups accepted since the last
batch (the learner logs the rejection-sampling rates).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from asyncor.buffer.rejection import GroupTally, uniform_kind
from asyncor.buffer.replay import ReplayStore
from asyncor.buffer.staleness import StalenessBudget
from asyncor.buffer.state import Counts, length_stats
from asyncor.wire.envelope import Message
from asyncor.wire.messages import BatchReply, GroupsReport, WaitReply

LONG_POLL_S = 1.0


@dataclass
class PendingBatch:
    peer: bytes
    request: Message
    n_groups: int
    since: float  # monotonic


class Batches:
    def __init__(self, config, store: ReplayStore, budget: StalenessBudget, tally: GroupTally, counts: Counts, log,
                 metrics):
        self.config = config
        self.store, self.budget, self.tally, self.counts = store, budget, tally, counts
        self.log, self.metrics = log, metrics
        self.pending: PendingBatch | None = None

    def request(self, peer: bytes, request: Message, n_groups: int) -> None:
        self.pending = PendingBatch(peer, request, n_groups, time.monotonic())

    def serve(self) -> tuple[bytes, Message, BatchReply | WaitReply] | None:
        """The answer owed to the pending request now, if any."""
        if self.pending is None:
            return None
        p = self.pending
        if self.config.buffer.stale_policy == "drop":
            self.drop_stale()
        groups = self.shrink(self.store.take(p.n_groups))
        if groups:
            self.pending = None
            return p.peer, p.request, self.batch(groups)
        if time.monotonic() - p.since > LONG_POLL_S:
            self.pending = None
            return p.peer, p.request, WaitReply(size=len(self.store))
        return None

    def drop_stale(self) -> None:
        """Drop every stored group older than η, counted with its responses' lengths; their slots go back."""
        stale = self.store.drop_stale(self.budget)
        if stale:
            self.counts.dropped_stale += len(stale)
            self.counts.lengths("dropped", stale)
            self.counts.turns(stale, None)
            self.budget.on_dropped(len(stale))
            self.log.info("dropped_stale", n=len(stale), version=self.budget.version)

    def shrink(self, groups: list) -> list:
        """Shrink mode (rejection sampling without refill): all-equal groups leave the batch taken; they were
        consumed by this step. A step left with nothing is skipped: their slots go back."""
        rejection = self.config.algo.rejection
        if not groups or not rejection.enabled or rejection.refill:
            return groups
        kinds = [uniform_kind(g) for g in groups]
        for kind in filter(None, kinds):
            self.counts.uniform(kind, self.tally)
        kept = [g for g, kind in zip(groups, kinds) if kind is None]
        if not kept:
            self.budget.on_dropped(len(groups))
            self.log.info("step_skipped_all_uniform", n=len(groups))
        return kept

    def batch(self, groups: list) -> BatchReply:
        ages = [self.budget.staleness(g.min_version) for g in groups]
        self.counts.staleness_trained.extend(ages)
        self.counts.lengths("trained", groups)
        self.counts.turns(groups, ages)
        trained, dropped = (length_stats(self.counts.len_hist[kind]) for kind in ("trained", "dropped"))
        self.metrics.log({
            "buffer/size": len(self.store),
            "buffer/in_flight": self.budget.in_flight,
            "buffer/capacity": self.budget.capacity(),
            "buffer/dropped_stale": self.counts.dropped_stale,
            "buffer/staleness_mean": float(np.mean(ages)),
            "buffer/staleness_max": int(max(ages)),
            "buffer/staleness_hist": np.bincount(ages, minlength=self.budget.max_staleness + 1).tolist(),
            "buffer/trained_len_mean": trained["mean"],
            **({"buffer/dropped_len_mean": dropped["mean"]} if dropped["responses"] else {}),
            "buffer/dropped_stale_responses": dropped["responses"],
        }, step=self.budget.version)
        return BatchReply(version=self.budget.version, staleness=ages, groups=[g.to_wire() for g in groups],
                          groups_report=GroupsReport(**self.tally.report()))
