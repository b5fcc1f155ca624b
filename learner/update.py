"""One training step of the Skywork-OR1 objective on a rollout batch of groups.

    rollout batch (D_R groups) -> mini-batches of D_T groups, N_reuse passes
    -> per mini-batch:  L = PPO-clip(ρ = π_θ/π_old, A) · [importance weight]
                            - α · H  (+ β · KL(π_θ || π_ref))
    N_SGD = (D_R / D_T) · N_reuse optimiser steps; the caller publishes one
    new policy version per training step.

π_old is the actors' behaviour log-prob μ, or the learner's own log-probs
recomputed before the first update ("recompute", which the importance
corrections need as π_prox). α comes from the entropy controller, fed the
batch's token-weighted full-vocabulary entropy before any update: from a
no-grad pre-pass when there are several SGD steps or π_old is recomputed,
otherwise from the step's own forward (the same numbers). The step's
entropy / KL(μ||π_θ) metrics are taken at that same point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from learner.batch import PackedBatch, pack
from learner.loss import behaviour_kl_k3, kl_k3, ppo_clip_surrogate, token_weights
from learner.off_policy import behaviour_weights


@dataclass
class UpdateSettings:
    """What one training step needs besides the data (built once by the learner)."""
    algo: object  # configs.schema.AlgoConfig
    eps_low: float
    eps_high: float
    grad_clip: float
    logprob_fn: object  # (model, PackedBatch) -> (logprob_N, entropy_N)
    pad_id: int


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def train_step(model, optimizer, groups, settings: UpdateSettings, controller, reference=None) -> dict:
    """Train on `groups`; returns this step's metrics (named role/metric)."""
    algo = settings.algo
    size = algo.off_policy.minibatch_prompts or len(groups)
    batches: list[PackedBatch] = [pack(groups[i:i + size], settings.pad_id, algo.truncation_mask)
                                  for i in range(0, len(groups), size)]
    device = next(model.parameters()).device
    recompute = algo.off_policy.old_logprobs == "recompute"
    n_sgd = len(batches) * algo.off_policy.reuse

    # Statistics of the batch under the weights before this step's first update.
    before = {"entropy": 0.0, "kl_behaviour": 0.0, "abs_diff": 0.0, "tokens": 0}

    def observe(logprob_N, entropy_N, b):
        with torch.no_grad():
            behaviour_N = b.behaviour_logprob_N.to(device)
            before["entropy"] += entropy_N.sum().item()
            before["kl_behaviour"] += behaviour_kl_k3(logprob_N, behaviour_N).sum().item()
            before["abs_diff"] += (logprob_N - behaviour_N).abs().sum().item()
            before["tokens"] += b.num_tokens

    prox: list[torch.Tensor | None] = [None] * len(batches)
    prepass = recompute or n_sgd > 1
    if prepass:
        with torch.no_grad():
            for i, b in enumerate(batches):
                lp, ent = settings.logprob_fn(model, b)
                prox[i] = lp if recompute else None
                observe(lp, ent, b)

    alpha = None
    record = {k: [] for k in ("loss", "grad_norm", "clip_low", "clip_high", "ratio_mean", "kl_ref", "is_weight",
                              "is_dropped")}
    ratio_min, ratio_max = float("inf"), float("-inf")
    for _ in range(algo.off_policy.reuse):
        for i, b in enumerate(batches):
            logprob_N, entropy_N = settings.logprob_fn(model, b)
            behaviour_N = b.behaviour_logprob_N.to(device)
            if alpha is None:
                if not prepass:  # one SGD step, nothing recomputed: this forward sees the whole batch
                    observe(logprob_N, entropy_N, b)
                alpha = controller.coefficient(before["entropy"] / max(before["tokens"], 1))
            weight_N = token_weights(b.row_N.to(device), b.num_responses, algo.aggregation)
            old_N = prox[i] if recompute else behaviour_N
            is_weight_N = behaviour_weights(prox[i], behaviour_N, algo.off_policy.correction, algo.off_policy.is_cap)
            loss, stats = ppo_clip_surrogate(logprob_N, old_N, b.advantage_N.to(device), weight_N,
                                             settings.eps_low, settings.eps_high, is_weight_N)
            if alpha:
                loss = loss - alpha * (weight_N * entropy_N).sum()
            if reference is not None and algo.kl_coef > 0:
                with torch.no_grad():
                    ref_N, _ = settings.logprob_fn(reference, b)
                kl = (weight_N * kl_k3(logprob_N, ref_N)).sum()
                loss = loss + algo.kl_coef * kl
                record["kl_ref"].append(kl.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            record["grad_norm"].append(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip).item())
            optimizer.step()
            record["loss"].append(loss.item())
            record["clip_low"].append(stats.clip_frac_low)
            record["clip_high"].append(stats.clip_frac_high)
            record["ratio_mean"].append(stats.ratio_mean)
            ratio_min, ratio_max = min(ratio_min, stats.ratio_min), max(ratio_max, stats.ratio_max)
            if is_weight_N is not None:
                record["is_weight"].append(is_weight_N.mean().item())
                record["is_dropped"].append((is_weight_N == 0).float().mean().item())

    tokens = max(before["tokens"], 1)
    lengths = np.concatenate([b.lengths for b in batches])
    truncated = np.concatenate([b.truncated for b in batches])
    values = {
        "learner/loss": _mean(record["loss"]),
        "learner/grad_norm": _mean(record["grad_norm"]),
        "learner/sgd_steps": n_sgd,
        # Token-weighted full-vocabulary entropy of the batch before the step: what the controller saw.
        "learner/entropy": before["entropy"] / tokens,
        "learner/entropy_coef": controller.coef,
        "learner/entropy_bonus": alpha or 0.0,
        "learner/clip_frac_low": _mean(record["clip_low"]),
        "learner/clip_frac_high": _mean(record["clip_high"]),
        "learner/is_ratio_mean": _mean(record["ratio_mean"]),
        "learner/is_ratio_min": ratio_min,
        "learner/is_ratio_max": ratio_max,
        # KL(μ || π_θ) (k3) and |log π_θ - log μ| before the step: ~0 on-policy, grow with staleness.
        "learner/kl_behaviour": before["kl_behaviour"] / tokens,
        "learner/behaviour_logprob_abs_diff": before["abs_diff"] / tokens,
        "learner/tokens": int(lengths.sum()),
        "learner/groups": len(groups),
        "learner/samples_per_group_mean": len(lengths) / max(len(groups), 1),
        "learner/response_len_mean": float(lengths.mean()),
        "learner/response_len_max": int(lengths.max()),
        "learner/truncation_rate": float(truncated.mean()),
        "reward/mean": float(np.concatenate([b.rewards for b in batches]).mean()),
    }
    if record["kl_ref"]:
        values["learner/kl_ref"] = _mean(record["kl_ref"])
    if record["is_weight"]:
        values["learner/is_weight_mean"] = _mean(record["is_weight"])
        values["learner/is_weight_dropped_frac"] = _mean(record["is_dropped"])
    return values
