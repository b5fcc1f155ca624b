"""GSPO-token (Zheng et al. 2025, arXiv 2507.18071, Eq. 13-14): GSPO with a per-token advantage.

    s_i,t = sg[s_i] · π_θ(y_i,t) / sg[π_θ(y_i,t)]        (s_i: objectives/gspo.py)
    ℓ_i,t = -min(s_i,t A_i,t, clip(s_i,t, 1 - ε_low, 1 + ε_high) A_i,t)

s_i,t equals s_i in value; its gradient is sg[s_i] ∇ log π_θ(y_i,t). With the same advantage on every token
(as here: one reward per response), loss and gradient equal GSPO's under loss_agg = "seq_mean_token_mean";
the form exists for per-token advantages (multi-turn credit). ε: algo.gspo.clip_low / clip_high.
"""

from __future__ import annotations

import torch

from asyncor.learner.loss import ObjectiveInputs, ObjectiveTerms, sequence_mean
from asyncor.learner.objectives.magic import clipped_surrogate


def per_token_loss(x: ObjectiveInputs, settings) -> ObjectiveTerms:
    log_s_N = sequence_mean(x.logprob_N - x.old_logprob_N, x.seq_N, x.num_seqs).detach()
    ratio_N = torch.exp(log_s_N + x.logprob_N - x.logprob_N.detach())
    gspo = settings.algo.gspo
    return clipped_surrogate(ratio_N, x.advantage_N, gspo.clip_low, gspo.clip_high)
