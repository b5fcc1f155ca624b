"""GSPO: Group Sequence Policy Optimization (Zheng et al. 2025, arXiv 2507.18071, Eq. 5-7).

The ratio is the sequence likelihood ratio, length-normalised (a geometric mean of the token ratios), and
the clip acts on whole responses:

    s_i = (π_θ(y_i) / π_old(y_i))^(1/|y_i|) = exp( (1/|y_i|) Σ_t log π_θ(y_i,t) / π_old(y_i,t) )
    ℓ_i = -min(s_i A_i, clip(s_i, 1 - ε_low, 1 + ε_high) A_i)

Every token of response i carries ℓ_i; with loss_agg = "seq_mean_token_mean" the loss is the paper's
(1/G) Σ_i ℓ_i exactly. ε: algo.gspo.clip_low / clip_high (the paper: 3e-4 / 4e-4).
"""

from __future__ import annotations

import torch

from asyncor.learner.loss import ObjectiveInputs, ObjectiveTerms, sequence_mean
from asyncor.learner.objectives.magic import clipped_surrogate


def per_token_loss(x: ObjectiveInputs, settings) -> ObjectiveTerms:
    log_s_N = sequence_mean(x.logprob_N - x.old_logprob_N, x.seq_N, x.num_seqs)
    gspo = settings.algo.gspo
    return clipped_surrogate(torch.exp(log_s_N), x.advantage_N, gspo.clip_low, gspo.clip_high)
