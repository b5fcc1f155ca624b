"""One training step of the Skywork-OR1 objective on a rollout batch of groups: plan, pre-pass, update, metrics.

    plan      `plan_step`: the rollout batch (D_R groups) cut into mini-batches of D_T groups
              (algo.off_policy.minibatch_prompts), each mini-batch's micro-batches on this rank
              (learner/packing.py), N_SGD = (D_R / D_T) · N_reuse, and whether a pre-pass is needed
    pre-pass  `pre_pass`: a no-grad forward of every micro-batch under the weights before the first update:
              the batch's entropy, KL(μ || π_θ), share over the importance cap, |log π_θ - log μ|, and the
              proximal log-probs π_prox when old_logprobs = "recompute"
    update    `update`: N_reuse passes over the mini-batches; per mini-batch, gradients accumulated over its
              micro-batches, then one optimiser step on
              L = PPO-clip(ρ = π_θ/π_old, A) · [importance weight] - α · H (+ β · KL(π_θ || π_ref)),
              each micro-batch's terms read from one `LossInputs` (learner/loss.py)
    metrics   `step_report`: the step's metrics dict (role/metric)
Each training step makes one new policy version (the caller broadcasts every `sync.every` steps).

π_old is the actors' behaviour log-prob μ, or the learner's own log-probs
recomputed in the pre-pass ("recompute", which the importance corrections
need as π_prox). α comes from the entropy controller, fed the batch's
token-weighted full-vocabulary entropy before any update, summed over every
micro-batch and rank. The pre-pass runs when the step recomputes π_old or has
several optimiser steps or micro-batches; otherwise the step is a single
forward on the whole batch under the initial weights, and the update takes the
statistics from that forward instead (the same numbers, one forward fewer).
The step's entropy / KL(μ||π_θ) metrics are taken at that same point.

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
from asyncor.learner.loss import LossInputs, LossSettings, behaviour_kl_k3, policy_loss
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


def train_step(policy, optimizer, groups, settings: UpdateSettings, controller, ranks: Ranks,
               reference=None) -> dict:
    """Train on `groups` (every rank passes the same groups); returns this step's metrics (role/metric)."""
    plan = plan_step(groups, settings, ranks)
    before = pre_pass(policy, plan, ranks, settings.algo.off_policy.is_cap) if plan.prepass else unobserved(plan)
    result = update(policy, optimizer, plan, before, settings, controller, ranks, reference)
    return step_report(plan, before.stats, result, controller, len(groups))


# --- plan ---

@dataclass
class StepPlan:
    """How one training step runs on this rank; every rank derives it from the same groups."""
    minibatches: list[MiniBatch]  # the rollout batch cut into mini-batches of D_T groups, in order
    micro_batches: list[list[MicroBatch]]  # [mini-batch]: this rank's micro-batches (the same count on every rank)
    reuse: int  # N_reuse: passes over the mini-batches
    recompute: bool  # π_old is the learner's log-prob before the first update (computed by the pre-pass)
    prepass: bool  # the statistics before the first update need a no-grad forward of their own

    @property
    def sgd_steps(self) -> int:
        """N_SGD = (D_R / D_T) · N_reuse."""
        return len(self.minibatches) * self.reuse


def plan_step(groups, settings: UpdateSettings, ranks: Ranks) -> StepPlan:
    """Cut `groups` into mini-batches of algo.off_policy.minibatch_prompts groups (0: one) and those into this
    rank's micro-batches."""
    algo = settings.algo
    size = algo.off_policy.minibatch_prompts or len(groups)
    minibatches = [minibatch(groups[i:i + size], algo.aggregation, algo.truncation_mask)
                   for i in range(0, len(groups), size)]
    micro = [my_micro_batches(mb, settings, ranks) for mb in minibatches]
    recompute = algo.off_policy.old_logprobs == "recompute"
    # Else the step is one forward on the whole batch, then one optimiser step: that forward gives the statistics
    # before the update itself, and a pre-pass would only repeat it.
    prepass = recompute or len(minibatches) * algo.off_policy.reuse > 1 or any(len(m) > 1 for m in micro)
    return StepPlan(minibatches, micro, algo.off_policy.reuse, recompute, prepass)


def my_micro_batches(mb: MiniBatch, settings: UpdateSettings, ranks: Ranks) -> list[MicroBatch]:
    """This rank's share of `mb` (the same count on every rank)."""
    mine = pack([len(s) for s in mb.sequences], settings.micro_batch_tokens, ranks.world, settings.layout)[ranks.rank]
    return [micro_batch([[mb.sequences[i] for i in row] for row in rows], settings.layout != "padded",
                        settings.pad_id) for rows in mine]


# --- pre-pass ---

@dataclass
class BatchBefore:
    """The batch under the weights before the step's first update."""
    stats: StepMetrics  # `observe`'s sums over every micro-batch, reduced over ranks once complete
    # [mini-batch][micro-batch]: log π_prox (N,) when old_logprobs = "recompute", else None
    prox_logprobs: list[list[torch.Tensor | None]]


def unobserved(plan: StepPlan) -> BatchBefore:
    """No pre-pass: empty statistics, which the update's first forward fills (see `update`)."""
    return BatchBefore(StepMetrics(), [[None] * len(m) for m in plan.micro_batches])


def pre_pass(policy, plan: StepPlan, ranks: Ranks, cap: float) -> BatchBefore:
    """No-grad forward of every micro-batch of this rank under the current weights (before any update)."""
    before = unobserved(plan)
    with torch.no_grad():
        for i, mbs in enumerate(plan.micro_batches):
            for j, mb in enumerate(mbs):
                logprob_N, entropy_N = policy_logprobs(policy, mb, ranks.device)
                before.prox_logprobs[i][j] = logprob_N if plan.recompute else None
                observe(before.stats, logprob_N, entropy_N, mb, ranks.device, cap)
    release(policy)
    before.stats.reduce(ranks)
    return before


def observe(stats: StepMetrics, logprob_N, entropy_N, mb: MicroBatch, device, cap: float) -> None:
    """Add `mb`'s statistics under the weights before this step's first update to `stats`."""
    with torch.no_grad():
        behaviour_N, real_N = mb.behaviour_logprob_N.to(device), mb.real_N.to(device)
        over_cap_N = (logprob_N - behaviour_N > float(np.log(cap))).to(real_N.dtype)
        stats.add(entropy=(entropy_N * real_N).sum(),
                  kl_behaviour=(behaviour_kl_k3(logprob_N, behaviour_N) * real_N).sum(),
                  over_cap=(over_cap_N * real_N).sum(),
                  abs_diff=((logprob_N - behaviour_N).abs() * real_N).sum(), tokens=real_N.sum(),
                  slots=mb.slots, real_tokens=mb.real_tokens, micro_batches=int(mb.real_tokens > 0))


# --- update ---

@dataclass
class UpdateResult:
    """What the update leaves for the step's metrics."""
    metrics: StepMetrics  # policy_loss statistics summed over every micro-batch and SGD step, reduced over ranks
    grad_norms: list[torch.Tensor]  # one per optimiser step, before clipping
    alpha: float  # the entropy bonus of this step


def update(policy, optimizer, plan: StepPlan, before: BatchBefore, settings: UpdateSettings, controller,
           ranks: Ranks, reference=None) -> UpdateResult:
    """N_reuse passes of one optimiser step per mini-batch, its micro-batches' gradients accumulated.

    Without a pre-pass (`plan.prepass` false) the first forward fills `before.stats`: it is then the step's only
    forward and sees the whole batch under the initial weights. α is set on the first micro-batch, once the
    batch's entropy before the step is known (`step_objective`)."""
    algo, device = settings.algo, ranks.device
    objective = None  # LossSettings, once α is known
    kl_to_reference = reference is not None and algo.kl_coef > 0
    metrics, grad_norms = StepMetrics(), []
    for _ in range(plan.reuse):
        for i, mbs in enumerate(plan.micro_batches):
            optimizer.zero_grad(set_to_none=True)
            for j, mb in enumerate(mbs):
                logprob_N, entropy_N = policy_logprobs(policy, mb, device)
                if objective is None:
                    if not plan.prepass:
                        observe(before.stats, logprob_N.detach(), entropy_N.detach(), mb, device,
                                algo.off_policy.is_cap)
                        before.stats.reduce(ranks)
                    objective = step_objective(before.stats, settings, controller)
                ref_N = reference_logprobs(reference, mb, device) if kl_to_reference else None
                inputs = loss_inputs(logprob_N, entropy_N, mb, before.prox_logprobs[i][j], ref_N, algo.off_policy,
                                     device)
                loss, stats = policy_loss(inputs, objective)
                # FSDP averages gradients over ranks; each rank's loss is already its share of the sum.
                (loss * ranks.world).backward()
                metrics.low(ratio_min=stats.pop("ratio_min"))
                metrics.high(ratio_max=stats.pop("ratio_max"))
                metrics.add(**stats)
            grad_norms.append(full_tensor(torch.nn.utils.clip_grad_norm_(policy.parameters(), settings.grad_clip)))
            optimizer.step()
    metrics.reduce(ranks)
    return UpdateResult(metrics, grad_norms, objective.alpha)


def step_objective(before: StepMetrics, settings: UpdateSettings, controller) -> LossSettings:
    """The objective's scalars for this step; advances the entropy controller (once per step) with the batch's
    token-weighted entropy before the step."""
    alpha = controller.coefficient(before.sum("entropy") / max(before.sum("tokens"), 1))
    return LossSettings(settings.eps_low, settings.eps_high, alpha, settings.algo.kl_coef)


def reference_logprobs(reference, mb: MicroBatch, device) -> torch.Tensor:
    """log π_ref (N,) of `mb`'s response tokens, without gradient."""
    with torch.no_grad():
        ref_N, _ = policy_logprobs(reference, mb, device)
    release(reference)
    return ref_N


def loss_inputs(logprob_N, entropy_N, mb: MicroBatch, prox_N, ref_N, off_policy, device) -> LossInputs:
    """The objective's view of micro-batch `mb`: this forward's log-prob and entropy, its data, the importance
    weight. `prox_N`: log π_prox from the pre-pass (None unless recomputed); `off_policy`: algo.off_policy."""
    behaviour_N = mb.behaviour_logprob_N.to(device)
    return LossInputs(
        logprob_N=logprob_N, entropy_N=entropy_N,
        old_logprob_N=prox_N if off_policy.old_logprobs == "recompute" else behaviour_N,
        advantage_N=mb.advantage_N.to(device), weight_N=mb.weight_N.to(device), real_N=mb.real_N.to(device),
        is_weight_N=behaviour_weights(prox_N, behaviour_N, off_policy.correction, off_policy.is_cap),
        ref_logprob_N=ref_N)


# --- metrics ---

def step_report(plan: StepPlan, before: StepMetrics, result: UpdateResult, controller, n_groups: int) -> dict:
    """The step's metrics (role/metric) from the statistics before the step and those of its updates."""
    metrics, n_sgd, minibatches = result.metrics, plan.sgd_steps, plan.minibatches
    tokens = max(before.sum("tokens"), 1)
    lengths = np.concatenate([mb.lengths for mb in minibatches])
    truncated = np.concatenate([mb.truncated for mb in minibatches])
    count = max(metrics.sum("ratio_count"), 1)
    values = {
        "learner/loss": metrics.sum("loss") / n_sgd,
        "learner/grad_norm": float(torch.stack(result.grad_norms).float().mean()),
        "learner/sgd_steps": n_sgd,
        "learner/micro_batches": int(before.sum("micro_batches")),
        # Share of the computed token positions that were padding (0 when packed, but for empty-rank fillers).
        "learner/padding_frac": 1.0 - before.sum("real_tokens") / max(before.sum("slots"), 1),
        # Token-weighted full-vocabulary entropy of the batch before the step: what the controller saw.
        "learner/entropy": before.sum("entropy") / tokens,
        "learner/entropy_coef": controller.coef,
        "learner/entropy_bonus": result.alpha,
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
        "learner/groups": n_groups,
        "learner/samples_per_group_mean": len(lengths) / max(n_groups, 1),
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
