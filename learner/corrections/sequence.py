"""Sequence-level truncated importance sampling (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings
You Off-Policy RL Training"; Liu et al. 2025, "When Speed Kills Stability", sequence-level IS): one weight
per response, the product of its token ratios, truncated, on every token of it.

    w_i = min( Π_t π_prox(y_i,t) / μ(y_i,t), C )      (computed in log space)

C: algo.off_policy.is_cap. Flagged: every token of a response whose product exceeds C.
"""

from __future__ import annotations

import math

import torch


def weights(log_ratio_M: torch.Tensor, seq_M: torch.Tensor, off_policy) -> tuple[torch.Tensor, torch.Tensor]:
    n_seqs = int(seq_M.max()) + 1 if seq_M.numel() else 0
    log_w_S = torch.zeros(n_seqs, dtype=torch.float64, device=log_ratio_M.device)
    log_w_S.index_add_(0, seq_M, log_ratio_M.double())
    log_w_M = log_w_S[seq_M]
    cap = math.log(off_policy.is_cap)
    return torch.exp(log_w_M.clamp(max=cap)).to(log_ratio_M.dtype), log_w_M > cap
