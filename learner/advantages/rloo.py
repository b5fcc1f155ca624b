"""RLOO: REINFORCE Leave-One-Out (Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!";
Ahmadian et al. 2024, arXiv 2402.14740, Eq. 4): each response's baseline is the mean reward of the others.

    A_i = r_i - (1 / (G - 1)) Σ_{j ≠ i} r_j  =  G / (G - 1) · (r_i - mean_G(r))

A group of one has no other sample: A = 0.
"""

from __future__ import annotations

import numpy as np


def advantages(rewards: list[np.ndarray]) -> list[np.ndarray]:
    return [np.zeros_like(r) if r.size < 2 else r - (r.sum() - r) / (r.size - 1) for r in rewards]
