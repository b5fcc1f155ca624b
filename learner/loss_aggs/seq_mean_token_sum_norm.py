"""Sequence sum over a constant (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783, Eq. 3): GRPO's per-response
1/|y_i| is replaced by one constant, so a response's tokens all count the same whatever its length (no bias
toward long wrong answers or short right ones).

    w_i,t = 1 / (B · L),   B = responses, L = algo.loss_agg_tokens (default: the largest max_response_tokens)

The weights sum to T / (B · L) ≤ 1, not 1: the loss is scaled down where responses are shorter than L.
"""

from __future__ import annotations

import numpy as np


def token_weights(lengths: np.ndarray, constant: int) -> np.ndarray:
    if constant < 1:
        raise ValueError(f"seq_mean_token_sum_norm needs a constant of at least 1 token, got {constant}")
    return np.full(int(lengths.sum()), 1.0 / (max(len(lengths), 1) * constant))
