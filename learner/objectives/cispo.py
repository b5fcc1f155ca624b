"""CISPO: Clipped IS-weight Policy Optimization (MiniMax 2025, MiniMax-M1, arXiv 2506.13585, Eq. 4-5).

Instead of dropping the gradient of tokens whose ratio left the trust region, CISPO clips the importance
weight itself and keeps every token's REINFORCE gradient:

    ρ_t = π_θ(y_t) / π_old(y_t)
    ρ̂_t = clip(ρ_t, 1 - ε_low^IS, 1 + ε_high^IS)
    ℓ_t = -sg(ρ̂_t) · A_t · log π_θ(y_t)

ε: algo.cispo.eps_low / eps_high (eps_low = 1: no floor, as in the paper).
"""

from __future__ import annotations

import torch

from asyncor.learner.loss import ObjectiveInputs, ObjectiveTerms


def per_token_loss(x: ObjectiveInputs, settings) -> ObjectiveTerms:
    c = settings.algo.cispo
    ratio_N = torch.exp(x.logprob_N - x.old_logprob_N).detach()
    weight_N = ratio_N.clamp(1 - c.eps_low, 1 + c.eps_high)
    return ObjectiveTerms(-weight_N * x.advantage_N * x.logprob_N, clip_low_N=ratio_N < 1 - c.eps_low,
                          clip_high_N=ratio_N > 1 + c.eps_high)
