"""Rewards for a chunk of samples, whatever the task: one object the actor and evaluation use.

* "arithmetic" (the built-in tasks, arithmetic and repeat): exact answer, scored inline (microseconds);
* "math" / "code" (task.kind = "files"): the verifier pool (tasks/verifier_pool.py),
  with its per-sample deadline, so a hostile sample cannot stall generation;
* `task.reward` overrides all of them: "package.module:function" scores every sample with the user's function
  in the verifier pool (tasks/user_reward.py, same deadline and crash containment); an http(s) URL scores them
  on a reward server (tasks/remote_reward.py: batched, deadline, retries, concurrency cap).
A response cut at the length limit scores 0 without being scored: it never finished its answer.

A user reward that fails for a sample scores it 0 and counts the reason (`failures`); the numeric details a user
function returns alongside its reward are averaged per scoring call (`detail_means`), for the actor's metrics.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    kind: str  # "arithmetic" | "math" | "code" | "custom"
    text: str
    reference: object  # answer string, or tests dict for code
    truncated: bool
    prompt: str = ""  # the prompt as text (a user reward's `problem["prompt"]`)
    problem_id: int = -1


def is_url(reward: str | None) -> bool:
    return bool(reward) and reward.startswith(("http://", "https://"))


class Scorer:
    def __init__(self, workers: int = 2, deadline_s: float = 40.0, needs_pool: bool = False,
                 reward: str | None = None, reward_server=None, phase: str = "train"):
        """`reward`: task.reward (None: the task's own scoring); `reward_server`: task.reward_server (configs/
        schema.py RewardServerConfig) when `reward` is a URL; `phase`: "train" | "eval", told to user rewards."""
        self.workers, self.deadline_s = workers, deadline_s
        self.reward, self.phase = reward, phase
        self._remote = None
        if is_url(reward):
            from asyncor.configs.schema import RewardServerConfig
            from asyncor.tasks.remote_reward import RemoteReward

            self._remote = RemoteReward(reward, reward_server or RewardServerConfig())
        custom = reward is not None and self._remote is None
        self._pool = self._make_pool() if needs_pool or custom else None
        self.detail_means: dict[str, float] = {}  # the last scoring call's user-reward details, averaged

    @property
    def custom(self) -> bool:
        """Scored by the user's function (in the pool)."""
        return self.reward is not None and self._remote is None

    def _make_pool(self):
        from asyncor.tasks.verifier_pool import PoolSettings, VerifierPool

        if self.custom:
            settings = PoolSettings(workers=self.workers, deadline_s=self.deadline_s, reward_path=self.reward,
                                    sandbox=False)
        else:
            settings = PoolSettings(workers=self.workers, deadline_s=self.deadline_s)
        return VerifierPool(settings)

    def _problem(self, s: Sample) -> dict:
        return {"id": s.problem_id, "prompt": s.prompt, "reference": s.reference}

    def score(self, samples: list[Sample]) -> list[float]:
        from asyncor.tasks.arithmetic import score
        from asyncor.tasks.verifier_pool import VerifierJob

        rewards = [0.0] * len(samples)
        todo = [i for i, s in enumerate(samples) if not s.truncated]
        if self._remote is not None:
            items = [{"id": samples[i].problem_id, "prompt": samples[i].prompt, "response": samples[i].text,
                      "reference": samples[i].reference, "kind": samples[i].kind} for i in todo]
            for i, reward in zip(todo, self._remote.score(items) if items else []):
                rewards[i] = reward
            return rewards
        jobs, where = [], []
        for i in todo:
            s = samples[i]
            if self.custom:
                jobs.append(VerifierJob("custom", s.text, s.reference, self._problem(s),
                                        {"kind": s.kind, "phase": self.phase}))
                where.append(i)
            elif s.kind == "arithmetic":
                rewards[i] = score(s.text, str(s.reference))
            else:
                jobs.append(VerifierJob(s.kind, s.text, s.reference))
                where.append(i)
        if jobs:
            if self._pool is None:
                self._pool = self._make_pool()
            for i, reward in zip(where, self._pool.score(jobs)):
                rewards[i] = reward
            if self._pool.details:
                self.detail_means = _means(self._pool.details)
                self._pool.details.clear()
        return rewards

    @property
    def timeouts(self) -> int:
        return self._pool.timeouts if self._pool else 0

    @property
    def failures(self) -> collections.Counter:
        """Samples a user reward (function or server) could not score, by reason, since start."""
        if self._remote is not None:
            return collections.Counter(self._remote.failures)
        return collections.Counter(self._pool.failures) if self._pool else collections.Counter()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._remote is not None:
            self._remote.close()


def make_scorer(config, needs_pool: bool, phase: str = "train", workers: int | None = None) -> Scorer:
    """The scorer of a run's `config` (configs/schema.py Config): its verifier settings and `task.reward`."""
    return Scorer(workers or config.actors.verifier_workers, config.actors.verifier_deadline_s, needs_pool,
                  config.task.reward, config.task.reward_server, phase)


def _means(details: list[dict]) -> dict[str, float]:
    sums: dict[str, list[float]] = collections.defaultdict(list)
    for d in details:
        for k, v in d.items():
            sums[k].append(v)
    return {k: sum(v) / len(v) for k, v in list(sums.items())[:16]}
