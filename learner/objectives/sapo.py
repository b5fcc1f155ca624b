"""SAPO: Soft Adaptive Policy Optimization (Gao et al. 2025, arXiv 2511.20347, Eq. 5-6).

A smooth, temperature-controlled gate replaces the hard clip: tokens far from the behaviour policy are
attenuated gradually instead of cut off, more sharply when the advantage is negative:

    ρ_t = π_θ(y_t) / π_old(y_t),   τ_t = τ_pos if A_t > 0 else τ_neg
    f(ρ) = σ(τ_t (ρ - 1)) · 4 / τ_t
    ℓ_t = -f(ρ_t) A_t

∇f = 4 σ(1 - σ) ∇ρ: at ρ = 1 the gradient is REINFORCE's, and it decays smoothly as ρ leaves 1.
τ: algo.sapo.tau_pos / tau_neg (the paper: 1.0 / 1.05).
"""

from __future__ import annotations

import torch

from asyncor.learner.loss import ObjectiveInputs, ObjectiveTerms


def per_token_loss(x: ObjectiveInputs, settings) -> ObjectiveTerms:
    s = settings.algo.sapo
    ratio_N = torch.exp(x.logprob_N - x.old_logprob_N)
    tau_N = torch.where(x.advantage_N > 0, torch.full_like(ratio_N, s.tau_pos), torch.full_like(ratio_N, s.tau_neg))
    gate_N = torch.sigmoid(tau_N * (ratio_N - 1)) * 4 / tau_N
    none = torch.zeros_like(ratio_N, dtype=torch.bool)
    return ObjectiveTerms(-gate_N * x.advantage_N, clip_low_N=none, clip_high_N=none)
