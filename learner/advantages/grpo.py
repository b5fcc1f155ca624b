"""GRPO group advantage (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, §4.1.2; Skywork-OR1 Eq. 2.5).

    A_i = (r_i - mean_G(r)) / (std_G(r) + 1e-6)      (unbiased std over the group)

The same value on every token of response i. A group of one has no baseline: A = 0.
"""

from __future__ import annotations

import numpy as np


def group(r: np.ndarray) -> np.ndarray:
    if r.size < 2:
        return np.zeros_like(r)
    return (r - r.mean()) / (r.std(ddof=1) + 1e-6)


def advantages(rewards: list[np.ndarray]) -> list[np.ndarray]:
    return [group(r) for r in rewards]
