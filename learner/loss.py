"""The policy loss: its inputs, the pieces every objective shares, and their sum.

`LossInputs` holds the per-token tensors of one micro-batch; `LossSettings` the step's scalars (clip bounds,
entropy bonus α, KL coefficient β, algo config); `policy_loss(inputs, settings, objective)` combines

    L = Σ_t w_t · c_t · ℓ_t  -  α Σ_t w_t H_t  (+ β Σ_t w_t KL_t(π_θ || π_ref))

where ℓ_t is the objective's per-token loss (learner/objectives/, picked by algo.objective), c_t the rollout
correction's weight (learner/corrections/, algo.correction; 1 for "none") and w_t the token's share of the
mini-batch loss (learner/loss_aggs/, algo.loss_agg). The weights are fixed over the whole mini-batch before
it is cut, so the loss and statistics of the micro-batches (and ranks) add up to the mini-batch's exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ObjectiveInputs:
    """What an objective reads of one micro-batch: all (N,), on one device."""
    logprob_N: torch.Tensor  # log π_θ of each response token (carries the gradient)
    old_logprob_N: torch.Tensor  # the ratio's denominator: behaviour log μ, or recomputed log π_prox
    advantage_N: torch.Tensor
    seq_N: torch.Tensor  # int64: the token's response, 0..num_seqs-1 within this micro-batch
    num_seqs: int
    mask_N: torch.Tensor | None = None  # the objective's own per-token mask (`token_mask`, e.g. M2PO); else None


@dataclass
class ObjectiveTerms:
    """An objective's answer for one micro-batch."""
    loss_N: torch.Tensor  # ℓ_t, carries the gradient
    clip_low_N: torch.Tensor  # bool: the token's lower bound was the active branch (its gradient was cut/clipped)
    clip_high_N: torch.Tensor  # bool: the upper one was


def sequence_mean(values_N: torch.Tensor, seq_N: torch.Tensor, num_seqs: int) -> torch.Tensor:
    """Each token's value replaced by the mean over its response's tokens (differentiable)."""
    sums_S = torch.zeros(num_seqs, dtype=values_N.dtype, device=values_N.device).index_add(0, seq_N, values_N)
    counts_S = torch.bincount(seq_N, minlength=num_seqs).clamp(min=1).to(values_N.dtype)
    return (sums_S / counts_S)[seq_N]


def kl_k3(logprob_N: torch.Tensor, ref_logprob_N: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π_θ || π_ref) on samples from π_θ: e^(ref-lp) - (ref-lp) - 1 >= 0."""
    diff = ref_logprob_N - logprob_N
    return torch.exp(diff) - diff - 1


def behaviour_kl_k3(logprob_N: torch.Tensor, behaviour_logprob_N: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(μ || π_θ) on samples from the behaviour policy μ: r - 1 - log r, r = π_θ/μ."""
    log_r = logprob_N - behaviour_logprob_N
    return torch.exp(log_r) - 1 - log_r


@dataclass
class LossInputs:
    """The per-token tensors of one micro-batch that the loss reads: all (N,), on one device."""
    logprob_N: torch.Tensor  # log π_θ of each response token (carries the gradient)
    entropy_N: torch.Tensor  # full-vocabulary entropy of π_θ at each token (carries the gradient)
    old_logprob_N: torch.Tensor  # the ratio's denominator: behaviour log μ, or recomputed log π_prox
    advantage_N: torch.Tensor
    weight_N: torch.Tensor  # the token's share of the mini-batch loss (learner/loss_aggs/)
    real_N: torch.Tensor  # 1 for data, 0 for an empty micro-batch's filler (not counted in the statistics)
    seq_N: torch.Tensor | None = None  # int64 response index within the micro-batch; None: one response per token
    num_seqs: int = 0  # responses in the micro-batch (with seq_N)
    is_weight_N: torch.Tensor | None = None  # the rollout correction's weight c_t (no gradient); None: 1
    mask_N: torch.Tensor | None = None  # the objective's own mask (M2PO); None when it has none
    ref_logprob_N: torch.Tensor | None = None  # log π_ref for the KL penalty; None: no penalty


@dataclass(frozen=True)
class LossSettings:
    """The objective's scalars for one training step."""
    eps_low: float  # PPO clip: ρ is clipped below at 1 - eps_low ...
    eps_high: float  # ... and above at 1 + eps_high (> eps_low: clip-higher)
    alpha: float = 0.0  # entropy bonus (the entropy controller's output for this step)
    kl_coef: float = 0.0  # β of the KL(π_θ || π_ref) penalty; applied only where ref_logprob_N is given
    algo: object = None  # configs.schema.AlgoConfig: the variants' own parameters (algo.gspo, algo.sapo, ...)


def policy_loss(inputs: LossInputs, settings: LossSettings, objective) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one micro-batch under `objective` (a learner/objectives/ module) and its statistics.

    Statistics are detached tensors that add up over micro-batches and ranks: token counts over real tokens
    (clipped below / above, ratio sums and count, correction weights), extremes, and weighted sums (kl_ref,
    loss)."""
    n = inputs.logprob_N.numel()
    if inputs.seq_N is None:  # every token a response of its own
        seq_N, num_seqs = torch.arange(n, device=inputs.logprob_N.device), n
    else:
        seq_N, num_seqs = inputs.seq_N, inputs.num_seqs
    terms = objective.per_token_loss(ObjectiveInputs(inputs.logprob_N, inputs.old_logprob_N, inputs.advantage_N,
                                                     seq_N, num_seqs, inputs.mask_N), settings)
    loss_N = terms.loss_N if inputs.is_weight_N is None else terms.loss_N * inputs.is_weight_N
    loss = (inputs.weight_N * loss_N).sum()
    real = inputs.real_N
    with torch.no_grad():
        r = torch.exp(inputs.logprob_N.detach() - inputs.old_logprob_N)
        live = real > 0
        inf = torch.tensor(float("inf"), device=r.device)
        stats = {"clip_low": (terms.clip_low_N.float() * real).sum(), "clip_high": (terms.clip_high_N.float() * real).sum(),
                 "ratio_sum": (r * real).sum(), "ratio_count": real.sum(),
                 "ratio_min": torch.where(live, r, inf).min() if n else inf,
                 "ratio_max": torch.where(live, r, -inf).max() if n else -inf}
    if settings.alpha:
        loss = loss - settings.alpha * (inputs.weight_N * inputs.entropy_N).sum()
    if inputs.ref_logprob_N is not None:
        kl = (inputs.weight_N * kl_k3(inputs.logprob_N, inputs.ref_logprob_N)).sum()
        loss = loss + settings.kl_coef * kl
        stats["kl_ref"] = kl.detach()
    stats["loss"] = loss.detach()
    return loss, stats
