"""The policy objective: its inputs, its pieces (token weights, PPO-clip surrogate, KL estimators) and their sum.

`LossInputs` holds the per-token tensors of one micro-batch that the objective
reads; `LossSettings` the step's scalars (clip bounds, entropy bonus α, KL
coefficient β); `policy_loss(inputs, settings)` combines the pieces. The
pieces are pure functions on flat per-token tensors. learner/update.py builds
one `LossInputs` per micro-batch. Every term is a weighted sum with per-token
weights that sum to one over the mini-batch, so the aggregation (token-level
as in the paper, or per-sequence as in GRPO) is chosen in one place
(`token_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATIONS = ("token", "sequence")


def token_weights(seq_N: torch.Tensor, num_seqs: int, aggregation: str) -> torch.Tensor:
    """Per-token weights summing to 1. seq_N: the response index (0..num_seqs-1) of every token.

    "token":    1 / T (every response token of the mini-batch counts the same; no 1/|y|).
    "sequence": 1 / (|y_i| · B) (each response counts the same, GRPO).
    """
    n = seq_N.numel()
    if n == 0:
        return torch.zeros(0, device=seq_N.device)
    if aggregation == "token":
        return torch.full((n,), 1.0 / n, device=seq_N.device)
    if aggregation == "sequence":
        counts = torch.bincount(seq_N, minlength=num_seqs)
        present = int((counts > 0).sum())  # responses with at least one token
        return 1.0 / (counts[seq_N].float() * present)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


@dataclass
class SurrogateStats:
    """Detached 0-dim tensors (no device sync until read); sums add up across micro-batches and ranks."""
    clip_low: torch.Tensor  # Σ w over tokens where the lower clip bound was the active branch
    clip_high: torch.Tensor  # Σ w over tokens where the upper one was
    ratio_sum: torch.Tensor  # Σ ρ over the counted tokens
    ratio_min: torch.Tensor  # +inf when no token counts
    ratio_max: torch.Tensor  # -inf when no token counts
    count: torch.Tensor  # tokens counted (Σ real)

    @property
    def ratio_mean(self) -> float:
        return float(self.ratio_sum / self.count.clamp(min=1))


def ppo_clip_surrogate(logprob_N, old_logprob_N, advantage_N, weight_N, eps_low: float, eps_high: float,
                       is_weight_N=None, real_N=None) -> tuple[torch.Tensor, SurrogateStats]:
    """-Σ w · c · min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A), ρ = π_θ / π_old; c = importance weight (default 1).

    ε_high > ε_low is clip-higher (DAPO); the paper uses ε_low = ε_high = 0.2. `real_N` (default all 1) marks
    the tokens the ratio statistics count (0: an empty micro-batch's filler).
    """
    ratio_N = torch.exp(logprob_N - old_logprob_N)
    clipped_N = ratio_N.clamp(1 - eps_low, 1 + eps_high)
    surrogate_N = torch.minimum(ratio_N * advantage_N, clipped_N * advantage_N)
    if is_weight_N is not None:
        surrogate_N = surrogate_N * is_weight_N
    loss = -(weight_N * surrogate_N).sum()
    with torch.no_grad():
        r = ratio_N.detach()
        real = torch.ones_like(r, dtype=torch.bool) if real_N is None else real_N > 0
        inf = torch.tensor(float("inf"), device=r.device)
        # The clipped branch is the one the min picked: below 1-ε_low with A < 0, above 1+ε_high with A > 0.
        stats = SurrogateStats(
            clip_low=(weight_N * ((r < 1 - eps_low) & (advantage_N < 0)).float()).sum(),
            clip_high=(weight_N * ((r > 1 + eps_high) & (advantage_N > 0)).float()).sum(),
            ratio_sum=(r * real).sum(),
            ratio_min=torch.where(real, r, inf).min() if r.numel() else inf,
            ratio_max=torch.where(real, r, -inf).max() if r.numel() else -inf,
            count=real.sum().float(),
        )
    return loss, stats


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
    """The per-token tensors of one micro-batch that the objective reads: all (N,), on one device."""
    logprob_N: torch.Tensor  # log π_θ of each response token (carries the gradient)
    entropy_N: torch.Tensor  # full-vocabulary entropy of π_θ at each token (carries the gradient)
    old_logprob_N: torch.Tensor  # the PPO ratio's denominator: behaviour log μ, or recomputed log π_prox
    advantage_N: torch.Tensor
    weight_N: torch.Tensor  # the token's share of the mini-batch loss (sums to 1 over the mini-batch)
    real_N: torch.Tensor  # 1 for data, 0 for an empty micro-batch's filler (not counted in the ratio statistics)
    is_weight_N: torch.Tensor | None = None  # behaviour importance weight (learner/off_policy.py); None: 1
    ref_logprob_N: torch.Tensor | None = None  # log π_ref for the KL penalty; None: no penalty


@dataclass(frozen=True)
class LossSettings:
    """The objective's scalars for one training step."""
    eps_low: float  # PPO clip: ρ is clipped below at 1 - eps_low ...
    eps_high: float  # ... and above at 1 + eps_high (> eps_low: clip-higher)
    alpha: float = 0.0  # entropy bonus (the entropy controller's output for this step)
    kl_coef: float = 0.0  # β of the KL(π_θ || π_ref) penalty; applied only where ref_logprob_N is given


def policy_loss(inputs: LossInputs, settings: LossSettings) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The Skywork-OR1 objective on one micro-batch: PPO-clip surrogate - α Σ w·H (+ β Σ w·KL(π_θ || π_ref)).

    With weights that sum to 1 over the mini-batch, the loss and the weighted statistics of the micro-batches
    add up to those of the mini-batch. Statistics are detached tensors: weighted sums (clip fractions, kl_ref,
    loss), token sums and counts over real tokens (ratio, importance weights), and extremes."""
    loss, s = ppo_clip_surrogate(inputs.logprob_N, inputs.old_logprob_N, inputs.advantage_N, inputs.weight_N,
                                 settings.eps_low, settings.eps_high, inputs.is_weight_N, inputs.real_N)
    stats = {"clip_low": s.clip_low, "clip_high": s.clip_high, "ratio_sum": s.ratio_sum, "ratio_count": s.count,
             "ratio_min": s.ratio_min, "ratio_max": s.ratio_max}
    if settings.alpha:
        loss = loss - settings.alpha * (inputs.weight_N * inputs.entropy_N).sum()
    if inputs.ref_logprob_N is not None:
        kl = (inputs.weight_N * kl_k3(inputs.logprob_N, inputs.ref_logprob_N)).sum()
        loss = loss + settings.kl_coef * kl
        stats["kl_ref"] = kl.detach()
    if inputs.is_weight_N is not None:
        stats["is_weight_sum"] = (inputs.is_weight_N * inputs.real_N).sum()
        stats["is_dropped"] = ((inputs.is_weight_N == 0).float() * inputs.real_N).sum()
    stats["loss"] = loss.detach()
    return loss, stats
