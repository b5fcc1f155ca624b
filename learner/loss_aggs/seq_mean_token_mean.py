"""Sequence mean of token means (GRPO, Shao et al. 2024, arXiv 2402.03300, Eq. 3): each response counts the
same, its tokens share its weight.

    w_i,t = 1 / (|y_i| · B'),   B' = responses with at least one token
"""

from __future__ import annotations

import numpy as np


def token_weights(lengths: np.ndarray, constant: int) -> np.ndarray:
    present = int((lengths > 0).sum())
    return np.repeat(1.0 / (np.maximum(lengths, 1) * max(present, 1)), lengths)
