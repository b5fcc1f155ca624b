"""One training step of the Skywork-OR1 objective on a rollout batch of groups.

    rollout batch (D_R groups) -> mini-batches of D_T groups, N_reuse passes
    -> per mini-batch: micro-batches (learner/packing.py) on each rank,
       gradients accumulated, one optimiser step
       L = PPO-clip(ρ = π_θ/π_old, A) · [importance weight] - α · H (+ β · KL(π_θ || π_ref))
    N_SGD = (D_R / D_T) · N_reuse optimiser steps; the caller publishes one
    new policy version per training step.

π_old is the actors' behaviour log-prob μ, or the learner's own log-probs
recomputed before the first update ("recompute", which the importance
corrections need as π_prox). α comes from the entropy controller, fed the
batch's token-weighted full-vocabulary entropy before any update, summed over
every micro-batch and rank: from a no-grad pre-pass when the step has several
optimiser steps or micro-batches or recomputes π_old, otherwise from the
step's own forward (the same numbers). The step's entropy / KL(μ||π_θ)
metrics are taken at that same point.

Exactness: token weights are fixed over the whole mini-batch before it is cut
(learner/batch.py), each micro-batch's loss is its share of the mini-batch
loss, and FSDP's gradient average over R ranks is undone by scaling by R; so
a mini-batch split into k micro-batches on R ranks takes the same optimiser
step as the unsplit one (tests/integration/test_sharded_learner.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from asyncor.learner.batch import MicroBatch, MiniBatch, micro_batch, minibatch
from asyncor.learner.loss import behaviour_kl_k3, policy_loss
from asyncor.learner.model import policy_logprobs
from asyncor.learner.off_policy import behaviour_weights
from asyncor.learner.packing import pack
from asyncor.learner.parallel import Ranks, full_tensor, release
from asyncor.learner.step_metrics import StepMetrics


@dataclass
class UpdateSettings:
    """What one training step needs besides the data (built once by the learner)."""
    algo: object  # configs.schema.AlgoConfig
    eps_low: float
    eps_high: float
    grad_clip: float
    pad_id: int
    micro_batch_tokens: int = 1 << 30
    layout: str = "varlen"  # learner/packing.py: varlen | rows | padded


def my_micro_batches(mb: MiniBatch, settings: UpdateSettings, ranks: Ranks) -> list[MicroBatch]:
    """This rank's share of `mb` (the same count on every rank)."""
    mine = pack([len(s) for s in mb.sequences], settings.micro_batch_tokens, ranks.world, settings.layout)[ranks.rank]
    return [micro_batch([[mb.sequences[i] for i in row] for row in rows], settings.layout != "padded",
                        settings.pad_id) for rows in mine]


def _observe(before: StepMetrics, logprob_N, entropy_N, mb: MicroBatch, device, cap: float) -> None:
    """Statistics of the batch under the weights before this step's first update."""
    with torch.no_grad():
        behaviour_N, real_N = mb.behaviour_logprob_N.to(device), mb.real_N.to(device)
        over_cap = (logprob_N - behaviour_N > float(np.log(cap))).to(real_N.dtype)
        before.add(entropy=(entropy_N * real_N).sum(),
                   kl_behaviour=(behaviour_kl_k3(logprob_N, behaviour_N) * real_N).sum(),
                   over_cap=(over_cap * real_N).sum(),
                   abs_diff=((logprob_N - behaviour_N).abs() * real_N).sum(), tokens=real_N.sum(),
                   slots=mb.slots, real_tokens=mb.real_tokens, micro_batches=int(mb.real_tokens > 0))


def train_step(policy, optimizer, groups, settings: UpdateSettings, controller, ranks: Ranks,
               reference=None) -> dict:
    """Train on `groups` (every rank passes the same groups); returns this step's metrics (role/metric)."""
    algo, device = settings.algo, ranks.device
    size = algo.off_policy.minibatch_prompts or len(groups)
    minibatches = [minibatch(groups[i:i + size], algo.aggregation, algo.truncation_mask)
                   for i in range(0, len(groups), size)]
    micro = [my_micro_batches(mb, settings, ranks) for mb in minibatches]
    recompute = algo.off_policy.old_logprobs == "recompute"
    n_sgd = len(minibatches) * algo.off_policy.reuse
    prepass = recompute or n_sgd > 1 or any(len(m) > 1 for m in micro)

    before = StepMetrics()
    prox: list[list[torch.Tensor | None]] = [[None] * len(m) for m in micro]
    if prepass:
        with torch.no_grad():
            for i, mbs in enumerate(micro):
                for j, mb in enumerate(mbs):
                    lp, ent = policy_logprobs(policy, mb, device)
                    prox[i][j] = lp if recompute else None
                    _observe(before, lp, ent, mb, device, algo.off_policy.is_cap)
        release(policy)
        before.reduce(ranks)

    alpha = None
    metrics = StepMetrics()
    grad_norms = []
    for _ in range(algo.off_policy.reuse):
        for i, mbs in enumerate(micro):
            optimizer.zero_grad(set_to_none=True)
            for j, mb in enumerate(mbs):
                logprob_N, entropy_N = policy_logprobs(policy, mb, device)
                behaviour_N = mb.behaviour_logprob_N.to(device)
                if alpha is None:
                    if not prepass:  # one micro-batch, one SGD step, nothing recomputed: this forward sees it all
                        _observe(before, logprob_N.detach(), entropy_N.detach(), mb, device,
                                 algo.off_policy.is_cap)
                        before.reduce(ranks)
                    alpha = controller.coefficient(before.sum("entropy") / max(before.sum("tokens"), 1))
                ref_N = None
                if reference is not None and algo.kl_coef > 0:
                    with torch.no_grad():
                        ref_N, _ = policy_logprobs(reference, mb, device)
                    release(reference)
                loss, stats = policy_loss(
                    logprob_N, entropy_N, prox[i][j] if recompute else behaviour_N, mb.advantage_N.to(device),
                    mb.weight_N.to(device), mb.real_N.to(device), settings.eps_low, settings.eps_high, alpha or 0.0,
                    behaviour_weights(prox[i][j], behaviour_N, algo.off_policy.correction, algo.off_policy.is_cap),
                    ref_N, algo.kl_coef)
                # FSDP averages gradients over ranks; each rank's loss is already its share of the sum.
                (loss * ranks.world).backward()
                metrics.low(ratio_min=stats.pop("ratio_min"))
                metrics.high(ratio_max=stats.pop("ratio_max"))
                metrics.add(**stats)
            grad_norms.append(full_tensor(torch.nn.utils.clip_grad_norm_(policy.parameters(), settings.grad_clip)))
            optimizer.step()
    metrics.reduce(ranks)

    tokens = max(before.sum("tokens"), 1)
    lengths = np.concatenate([mb.lengths for mb in minibatches])
    truncated = np.concatenate([mb.truncated for mb in minibatches])
    count = max(metrics.sum("ratio_count"), 1)
    values = {
        "learner/loss": metrics.sum("loss") / n_sgd,
        "learner/grad_norm": float(torch.stack(grad_norms).float().mean()),
        "learner/sgd_steps": n_sgd,
        "learner/micro_batches": int(before.sum("micro_batches")),
        # Share of the computed token positions that were padding (0 when packed, but for empty-rank fillers).
        "learner/padding_frac": 1.0 - before.sum("real_tokens") / max(before.sum("slots"), 1),
        # Token-weighted full-vocabulary entropy of the batch before the step: what the controller saw.
        "learner/entropy": before.sum("entropy") / tokens,
        "learner/entropy_coef": controller.coef,
        "learner/entropy_bonus": alpha or 0.0,
        "learner/clip_frac_low": metrics.sum("clip_low") / n_sgd,
        "learner/clip_frac_high": metrics.sum("clip_high") / n_sgd,
        "learner/is_ratio_mean": metrics.sum("ratio_sum") / count,
        "learner/is_ratio_min": metrics.min("ratio_min"),
        "learner/is_ratio_max": metrics.max("ratio_max"),
        # KL(μ || π_θ) (k3) and |log π_θ - log μ| before the step: ~0 on-policy, grow with staleness.
        "learner/kl_behaviour": before.sum("kl_behaviour") / tokens,
        "learner/behaviour_logprob_abs_diff": before.sum("abs_diff") / tokens,
        # Share of tokens with π_θ / μ > algo.off_policy.is_cap before the step: what "decoupled" drops and
        # "tis" truncates (measured whatever the correction).
        "learner/behaviour_over_cap_frac": before.sum("over_cap") / tokens,
        "learner/tokens": int(lengths.sum()),
        "learner/groups": len(groups),
        "learner/samples_per_group_mean": len(lengths) / max(len(groups), 1),
        "learner/response_len_mean": float(lengths.mean()),
        "learner/response_len_max": int(lengths.max()),
        "learner/truncation_rate": float(truncated.mean()),
        "reward/mean": float(np.concatenate([mb.rewards for mb in minibatches]).mean()),
    }
    if "kl_ref" in metrics:
        values["learner/kl_ref"] = metrics.sum("kl_ref") / n_sgd
    if "is_weight_sum" in metrics:
        values["learner/is_weight_mean"] = metrics.sum("is_weight_sum") / count
        values["learner/is_weight_dropped_frac"] = metrics.sum("is_dropped") / count
    return values
