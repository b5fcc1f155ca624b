"""GRPO advantages and the token-level PPO-clip loss (DESIGN §6 basics, no KL).

Pure functions on tensors / arrays; unit-tested on hand-computed values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def group_advantages(rewards_G: np.ndarray) -> np.ndarray:
    """(r - mean) / (std + 1e-6) with the unbiased std; a group of one gets 0."""
    r = np.asarray(rewards_G, dtype=np.float64)
    if r.size < 2:
        return np.zeros_like(r, dtype=np.float32)
    return ((r - r.mean()) / (r.std(ddof=1) + 1e-6)).astype(np.float32)


@dataclass
class LossStats:
    clip_frac_low: float
    clip_frac_high: float
    ratio_mean: float
    ratio_min: float
    ratio_max: float


def ppo_clip_loss(logprob_N: torch.Tensor, behaviour_logprob_N: torch.Tensor, advantage_N: torch.Tensor,
                  eps_low: float, eps_high: float) -> tuple[torch.Tensor, LossStats]:
    """Token-level PPO-clip: -mean_t min(ρ A, clip(ρ, 1-eps_low, 1+eps_high) A), ρ = π_θ / π_behaviour.

    The mean runs over all response tokens of the batch (no per-response 1/|y|).
    """
    ratio_N = torch.exp(logprob_N - behaviour_logprob_N)
    clipped_N = ratio_N.clamp(1 - eps_low, 1 + eps_high)
    surrogate_N = torch.minimum(ratio_N * advantage_N, clipped_N * advantage_N)
    loss = -surrogate_N.mean()
    with torch.no_grad():
        r = ratio_N.detach()
        # A token is clipped when the clipped branch is the one the min picked.
        low = ((r < 1 - eps_low) & (advantage_N < 0)).float().mean().item() if r.numel() else 0.0
        high = ((r > 1 + eps_high) & (advantage_N > 0)).float().mean().item() if r.numel() else 0.0
        stats = LossStats(low, high, r.mean().item(), r.min().item(), r.max().item())
    return loss, stats
