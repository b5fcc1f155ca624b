"""REINFORCE++-baseline (Hu et al. 2025, arXiv 2501.03262, §3.3, the variant for reasoning tasks with
several samples per prompt): the group mean is subtracted first, then the result is normalised over the
whole batch (every response of the training step).

    a_i = r_i - mean_G(r);   A_i = (a_i - mean_B(a)) / (std_B(a) + 1e-6)      (population std)
"""

from __future__ import annotations

import numpy as np

from asyncor.learner.advantages.reinforce_pp import batch_normalise


def advantages(rewards: list[np.ndarray]) -> list[np.ndarray]:
    return batch_normalise([r - r.mean() if r.size else r for r in rewards])
