"""Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective",
arXiv 2503.20783, Eq. 3): the group mean as baseline, without GRPO's division by the group's std (which
weights easy and hard prompts unequally).

    A_i = r_i - mean_G(r)

A group of one: A = 0. Pair it with loss_agg = "seq_mean_token_sum_norm" for the paper's whole recipe.
"""

from __future__ import annotations

import numpy as np


def advantages(rewards: list[np.ndarray]) -> list[np.ndarray]:
    return [np.zeros_like(r) if r.size < 2 else r - r.mean() for r in rewards]
