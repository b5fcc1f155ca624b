"""Naive eager log-prob + entropy: full [N, V] logits, log_softmax, gather.

What most RL code does today; the baseline of benchmarks/logprob_entropy.py
and, called on float64 inputs, the reference the tests check against.
"""

from __future__ import annotations

import torch


def logprob_entropy_naive(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, target_N: torch.Tensor,
                          temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprob_N, entropy_N) in the precision of the logits (fp32 at least)."""
    logits_NV = hidden_NH @ weight_VH.T
    logits_NV = logits_NV.to(torch.promote_types(logits_NV.dtype, torch.float32)) / temperature
    logp_NV = torch.log_softmax(logits_NV, dim=-1)
    entropy_N = -(torch.softmax(logits_NV, dim=-1) * logp_NV).sum(dim=-1)
    return logp_NV.gather(1, target_N[:, None]).squeeze(1), entropy_N
