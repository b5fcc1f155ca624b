"""IcePop: two-sided token masking of the training-inference mismatch (Ling Team 2025, "Every Step Evolves:
Scaling Reinforcement Learning for Trillion-Scale Thinking Model" (Ring-1T), arXiv 2510.18855, Eq. 2-3).

    k_t = π_prox(y_t) / μ(y_t)
    w_t = k_t   if α ≤ k_t ≤ β,   else 0

α: algo.off_policy.is_floor (the paper: 0.5); β: algo.off_policy.is_cap (the paper: 5). Flagged: the tokens
masked on either side.
"""

from __future__ import annotations

import torch


def weights(log_ratio_M: torch.Tensor, seq_M: torch.Tensor, off_policy) -> tuple[torch.Tensor, torch.Tensor]:
    ratio_M = torch.exp(log_ratio_M)
    masked_M = (ratio_M < off_policy.is_floor) | (ratio_M > off_policy.is_cap)
    return torch.where(masked_M, torch.zeros_like(ratio_M), ratio_M), masked_M
