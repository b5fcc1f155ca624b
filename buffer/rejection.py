"""Rejection sampling (Skywork-OR1 §3.1): groups whose rewards are all equal carry no signal.

With group-normalised advantages such a group has A = 0 for every response;
kept, it only dilutes the token-level mean and inflates the weight of the
entropy term. It is dropped and counted: `solve_all` (every sample right) or
`solve_none` (every sample wrong). The buffer applies it (algo.rejection):
refill mode drops at arrival, so batches stay full; shrink mode drops from a
batch already taken, as the original code does.

`GroupTally` also keeps the accuracy histogram (10 bins of a group's mean
reward) of every group accepted (duplicates and refused groups are not
counted), reported with each batch and reset.
"""

from __future__ import annotations

import numpy as np

from asyncor.wire.trajectory import TrajectoryGroup

HIST_BINS = 10


def uniform_kind(group: TrajectoryGroup) -> str | None:
    """'solve_all' / 'solve_none' for an all-equal group, else None."""
    rewards = np.asarray(group.rewards, dtype=np.float64)
    if rewards.size == 0 or not np.all(rewards == rewards[0]):
        return None
    return "solve_all" if rewards[0] > 0 else "solve_none"


class GroupTally:
    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.arrived = 0
        self.counts = {"solve_all": 0, "solve_none": 0}
        self.hist = [0] * HIST_BINS

    def on_arrival(self, group: TrajectoryGroup) -> None:
        self.arrived += 1
        accuracy = float(np.clip(np.mean(group.rewards), 0.0, 1.0))
        self.hist[min(int(accuracy * HIST_BINS), HIST_BINS - 1)] += 1

    def on_rejected(self, kind: str) -> None:
        self.counts[kind] += 1

    def report(self) -> dict:
        """What the learner logs with the batch; then counting starts again."""
        out = {"arrived": self.arrived, **self.counts, "accuracy_hist": list(self.hist)}
        self.reset()
        return out
