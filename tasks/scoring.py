"""Rewards for a chunk of samples, whatever the task: one object the actor and evaluation use.

* "arithmetic" (the built-in tasks, arithmetic and repeat): exact answer, scored inline (microseconds);
* "math" / "code" (task.kind = "files"): the verifier pool (tasks/verifier_pool.py),
  with its per-sample deadline, so a hostile sample cannot stall generation.
A response cut at the length limit scores 0 without being verified: it never
finished its answer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    kind: str  # "arithmetic" | "math" | "code"
    text: str
    reference: object  # answer string, or tests dict for code
    truncated: bool


class Scorer:
    def __init__(self, workers: int = 2, deadline_s: float = 40.0, needs_pool: bool = False):
        self.workers, self.deadline_s = workers, deadline_s
        self._pool = self._make_pool() if needs_pool else None

    def _make_pool(self):
        from asyncor.tasks.verifier_pool import PoolSettings, VerifierPool

        return VerifierPool(PoolSettings(workers=self.workers, deadline_s=self.deadline_s))

    def score(self, samples: list[Sample]) -> list[float]:
        from asyncor.tasks.verifier_pool import VerifierJob
        from asyncor.tasks.arithmetic import score

        rewards = [0.0] * len(samples)
        jobs, where = [], []
        for i, s in enumerate(samples):
            if s.truncated:
                continue
            if s.kind == "arithmetic":
                rewards[i] = score(s.text, str(s.reference))
            else:
                jobs.append(VerifierJob(s.kind, s.text, s.reference))
                where.append(i)
        if jobs:
            if self._pool is None:
                self._pool = self._make_pool()
            for i, reward in zip(where, self._pool.score(jobs)):
                rewards[i] = reward
        return rewards

    @property
    def timeouts(self) -> int:
        return self._pool.timeouts if self._pool else 0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
