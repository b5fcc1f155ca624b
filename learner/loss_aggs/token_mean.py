"""Token mean (Skywork-OR1 Eq. 3.1; DAPO's token-level loss, arXiv 2503.14476 §3.3): every response token of
the mini-batch counts the same, so long responses weigh more; no per-response 1/|y|.

    w_t = 1 / T,   T = Σ_i |y_i|
"""

from __future__ import annotations

import numpy as np


def token_weights(lengths: np.ndarray, constant: int) -> np.ndarray:
    total = int(lengths.sum())
    return np.full(total, 1.0 / total if total else 0.0)
