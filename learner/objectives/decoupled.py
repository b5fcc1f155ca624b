"""Decoupled PPO: AReaL's objective for stale data (Fu et al. 2025, arXiv 2505.24298, Eq. 5).

The PPO clip is taken against the proximal policy π_prox (the learner's weights before the step's first
update, recomputed), not the stale behaviour policy μ that generated the tokens; the gap from μ to π_prox is
corrected by the behaviour importance weight:

    ρ_t = π_θ(y_t) / π_prox(y_t),   w_t = π_prox(y_t) / μ(y_t)  (no gradient)
    ℓ_t = -w_t · min(ρ_t A_t, clip(ρ_t, 1 - ε_low, 1 + ε_high) A_t)

The clipped term is MAGIC's (objectives/magic.py); w_t is algo.correction's weight, which the loss applies to
every objective. What makes this variant the decoupled objective is what it requires of the config
(configs/algorithms.py): old_logprobs = "recompute" (so π_old = π_prox) and a correction other than "none".
AReaL masks tokens with w_t above a cap (behav_imp_weight_cap): correction = "mis".
"""

from __future__ import annotations

from asyncor.learner.loss import ObjectiveInputs, ObjectiveTerms
from asyncor.learner.objectives.magic import per_token_loss as clipped_loss


def per_token_loss(x: ObjectiveInputs, settings) -> ObjectiveTerms:
    return clipped_loss(x, settings)
