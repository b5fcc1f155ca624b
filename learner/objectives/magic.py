"""MAGIC / GRPO token-level PPO-clip with clip-higher: the Skywork-OR1 objective (the default).

Skywork-OR1 (He et al. 2025, arXiv 2505.22312, Eq. 3.1), with DAPO's clip-higher (Yu et al. 2025,
arXiv 2503.14476, Eq. 8):

    ρ_t = π_θ(y_t) / π_old(y_t)
    ℓ_t = -min(ρ_t A_t, clip(ρ_t, 1 - ε_low, 1 + ε_high) A_t)

ε_low, ε_high: learner.clip_eps_low / clip_eps_high. π_old: algo.off_policy.old_logprobs.
"""

from __future__ import annotations

import torch

from asyncor.learner.loss import ObjectiveInputs, ObjectiveTerms


def clipped_surrogate(ratio_N: torch.Tensor, advantage_N: torch.Tensor, eps_low: float,
                      eps_high: float) -> ObjectiveTerms:
    """-min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A) per token, with the tokens where the clipped branch was taken."""
    clipped_N = ratio_N.clamp(1 - eps_low, 1 + eps_high)
    loss_N = -torch.minimum(ratio_N * advantage_N, clipped_N * advantage_N)
    r = ratio_N.detach()
    return ObjectiveTerms(loss_N, clip_low_N=(r < 1 - eps_low) & (advantage_N < 0),
                          clip_high_N=(r > 1 + eps_high) & (advantage_N > 0))


def per_token_loss(x: ObjectiveInputs, settings) -> ObjectiveTerms:
    return clipped_surrogate(torch.exp(x.logprob_N - x.old_logprob_N), x.advantage_N, settings.eps_low,
                             settings.eps_high)
