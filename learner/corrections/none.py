"""No rollout correction: every token weighs 1 (the ratio's denominator is whatever old_logprobs says)."""

from __future__ import annotations

import torch


def weights(log_ratio_M: torch.Tensor, seq_M: torch.Tensor, off_policy) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ones_like(log_ratio_M), torch.zeros_like(log_ratio_M, dtype=torch.bool)
