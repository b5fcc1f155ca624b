"""MIS: masked importance sampling, token level (Liu et al. 2025, "When Speed Kills Stability: Demystifying RL
Collapse from the Training-Inference Mismatch", yingru.notion.site; AReaL's behaviour-weight cap, Fu et al.
2025, arXiv 2505.24298).

    w_t = π_prox(y_t) / μ(y_t)   if that is ≤ C,   else 0  (the token is left out)

C: algo.off_policy.is_cap. Flagged: the tokens masked.
"""

from __future__ import annotations

import torch


def weights(log_ratio_M: torch.Tensor, seq_M: torch.Tensor, off_policy) -> tuple[torch.Tensor, torch.Tensor]:
    ratio_M = torch.exp(log_ratio_M)
    masked_M = ratio_M > off_policy.is_cap
    return torch.where(masked_M, torch.zeros_like(ratio_M), ratio_M), masked_M
