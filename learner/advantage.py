"""Group-normalised advantages (GRPO / Skywork-OR1 Eq. 2.5) with the paper's truncation masks.

A = (r - mean) / (std + 1e-6) over the group, unbiased std, one value per
response (every token of it). A group of one has no baseline: A = 0.
Truncated responses already carry reward 0 (the actor scores them so);
`mask` decides what else happens to them (report §3.2.3):
  "none"   - nothing: they are ordinary zero-reward samples (the final recipe);
  "before" - left out of the group mean/std, advantage 0 (Adv-Mask-Before);
  "after"  - counted in the mean/std, then advantage 0 (Adv-Mask-After).
"""

from __future__ import annotations

import numpy as np

TRUNCATION_MASKS = ("none", "before", "after")


def _normalise(r: np.ndarray) -> np.ndarray:
    if r.size < 2:
        return np.zeros_like(r)
    return (r - r.mean()) / (r.std(ddof=1) + 1e-6)


def group_advantages(rewards_G, truncated_G=None, mask: str = "none") -> np.ndarray:
    """float32 advantage per response of one group."""
    if mask not in TRUNCATION_MASKS:
        raise ValueError(f"truncation mask must be one of {TRUNCATION_MASKS}, got {mask!r}")
    r = np.asarray(rewards_G, dtype=np.float64)
    truncated = np.zeros(r.shape, dtype=bool) if truncated_G is None else np.asarray(truncated_G, dtype=bool)
    if mask == "none" or not truncated.any():
        return _normalise(r).astype(np.float32)
    adv = np.zeros_like(r)
    if mask == "before":
        kept = ~truncated
        adv[kept] = _normalise(r[kept])
    else:
        adv = _normalise(r)
        adv[truncated] = 0.0
    return adv.astype(np.float32)
