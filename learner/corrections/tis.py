"""TIS: truncated importance sampling (Ionides 2008; for the trainer-inference mismatch: Yao et al. 2025,
"Your Efficient RL Framework Secretly Brings You Off-Policy RL Training", fengyao.notion.site/off-policy-rl).

    w_t = min(π_prox(y_t) / μ(y_t), C)

C: algo.off_policy.is_cap. Flagged: the tokens truncated (ratio above C).
"""

from __future__ import annotations

import torch


def weights(log_ratio_M: torch.Tensor, seq_M: torch.Tensor, off_policy) -> tuple[torch.Tensor, torch.Tensor]:
    ratio_M = torch.exp(log_ratio_M)
    return ratio_M.clamp(max=off_policy.is_cap), ratio_M > off_policy.is_cap
