"""REINFORCE++ (Hu et al. 2025, arXiv 2501.03262, §3.2): no per-prompt baseline; the rewards are
normalised over the whole global batch (here: every response of the training step).

    A_i = (r_i - mean_B(r)) / (std_B(r) + 1e-6)      (population std over the batch)

The paper folds a KL penalty into the reward; asyncor has none there (algo.kl_coef is a loss term).
"""

from __future__ import annotations

import numpy as np


def batch_normalise(values: list[np.ndarray]) -> list[np.ndarray]:
    flat = np.concatenate(values) if values else np.zeros(0)
    if flat.size == 0:
        return values
    mean, std = flat.mean(), flat.std()
    return [(v - mean) / (std + 1e-6) for v in values]


def advantages(rewards: list[np.ndarray]) -> list[np.ndarray]:
    return batch_normalise(rewards)
