"""Advantages of a training step's groups: the estimator (learner/advantages/, algo.advantage) with the
paper's truncation masks around it.

One value per response (every token of it). Truncated responses already carry reward 0 (the actor scores
them so); `mask` decides what else happens to them (report §3.2.3):
  "none"   - nothing: they are ordinary zero-reward samples (the final recipe);
  "before" - left out of the estimator's statistics, advantage 0 (Adv-Mask-Before);
  "after"  - counted in the statistics, then advantage 0 (Adv-Mask-After).
The estimator sees the whole step's groups at once, so batch-level ones (REINFORCE++) normalise over it.
"""

from __future__ import annotations

import numpy as np

TRUNCATION_MASKS = ("none", "before", "after")


def step_advantages(rewards, truncated, estimator, mask: str = "none") -> list[np.ndarray]:
    """float32 advantage per response of each group. `rewards`, `truncated`: one sequence per group;
    `estimator`: a learner/advantages/ module."""
    if mask not in TRUNCATION_MASKS:
        raise ValueError(f"truncation mask must be one of {TRUNCATION_MASKS}, got {mask!r}")
    rewards = [np.asarray(r, dtype=np.float64) for r in rewards]
    cut = [np.asarray(t, dtype=bool) if t is not None else np.zeros(r.shape, bool) for r, t in zip(rewards, truncated)]
    kept = [~c if mask == "before" else np.ones(c.shape, bool) for c in cut]
    estimates = estimator.advantages([r[k] for r, k in zip(rewards, kept)])
    out = []
    for r, c, k, est in zip(rewards, cut, kept, estimates):
        adv = np.zeros_like(r)
        adv[k] = est
        if mask == "after":
            adv[c] = 0.0
        out.append(adv.astype(np.float32))
    return out


def group_advantages(rewards_G, truncated_G=None, mask: str = "none", estimator=None) -> np.ndarray:
    """One group's advantages (GRPO by default): `step_advantages` of a batch of one."""
    if estimator is None:
        from asyncor.learner.advantages import grpo as estimator
    return step_advantages([rewards_G], [truncated_G], estimator, mask)[0]
