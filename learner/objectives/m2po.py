"""M2PO: Second-Moment Trust Policy Optimization (Zheng et al. 2025, "Prosperity before Collapse: How Far
Can Off-Policy RL Reach with Stale Data on LLMs?", arXiv 2510.01161, Eq. 6-8, Algorithm 1).

No clip: instead, the second moment of the log importance ratio over the batch is held under a threshold by
masking the most extreme tokens only:

    M2 = (1/N) Σ_t (log π_θ(y_t) / μ(y_t))²
    M_t ∈ {0, 1}: drop the tokens with the largest (log π_θ/μ)² until the mean over the kept ones ≤ τ_M2
    ℓ_t = -M_t · ρ_t · A_t,   ρ_t = π_θ(y_t) / π_old(y_t)

The mask is computed once per mini-batch, over all of its tokens (every micro-batch and rank), from the
weights before the step's first update (`token_mask`); with one optimiser step per batch those are the
weights the gradient is taken at, as in the paper. τ_M2: algo.m2po.threshold (the paper: 0.04).
"""

from __future__ import annotations

import torch

from asyncor.learner.loss import ObjectiveInputs, ObjectiveTerms


def token_mask(log_ratio_M: torch.Tensor, settings) -> torch.Tensor:
    """1.0 for the kept tokens of the mini-batch, 0.0 for the masked ones. `log_ratio_M`: log π_θ/μ (M,)."""
    m2_M = log_ratio_M.detach().double() ** 2
    order = torch.argsort(m2_M, stable=True)
    prefix_mean = torch.cumsum(m2_M[order], 0) / torch.arange(1, len(order) + 1, dtype=torch.float64)
    # Prefix means of the ascending values never decrease: the kept set is the longest prefix within τ.
    kept = int((prefix_mean <= settings.algo.m2po.threshold).sum())
    mask_M = torch.zeros_like(m2_M)
    mask_M[order[:kept]] = 1.0
    return mask_M.to(log_ratio_M.dtype)


def per_token_loss(x: ObjectiveInputs, settings) -> ObjectiveTerms:
    ratio_N = torch.exp(x.logprob_N - x.old_logprob_N)
    none = torch.zeros_like(ratio_N, dtype=torch.bool)
    return ObjectiveTerms(-x.mask_N * ratio_N * x.advantage_N, clip_low_N=none, clip_high_N=none)
