"""One training step of the Skywork-OR1 objective on a rollout batch of groups: plan, pre-pass, update, metrics.

    plan      `plan_step`: the rollout batch (D_R groups) cut into mini-batches of D_T groups
              (algo.off_policy.minibatch_prompts), each mini-batch's micro-batches on this rank
              (learner/packing.py), N_SGD = (D_R / D_T) · N_reuse, and whether a pre-pass is needed
    pre-pass  `pre_pass`: a no-grad forward of every micro-batch under the weights before the first update:
              the batch's entropy and, per mini-batch, log π_prox of every token gathered over micro-batches
              and ranks (`MiniBatchBefore`): the ratio's denominator when old_logprobs = "recompute", the
              rollout correction's weights and the objective's own mask from log π_prox/μ, and the
              trainer-inference mismatch by staleness (learner/mismatch.py)
    update    `update`: N_reuse passes over the mini-batches; per mini-batch, gradients accumulated over its
              micro-batches, then one optimiser step on
              L = Σ w · c · ℓ_objective - α · Σ w · H (+ β · KL(π_θ || π_ref)),
              each micro-batch's terms read from one `LossInputs` (learner/loss.py)
    metrics   `step_report`: the step's metrics dict (role/metric)
Each training step makes one new policy version (the caller broadcasts every `sync.every` steps).

The variants (objective ℓ, advantage estimator, rollout correction c, loss
aggregation w) are the modules algo picks (learner/variants.py); nothing here
names one. π_old is the actors' behaviour log-prob μ, or the learner's own
log-probs recomputed in the pre-pass ("recompute", which the corrections need
as π_prox). α comes from the entropy controller, fed the batch's
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

from dataclasses import dataclass, field

import numpy as np
import torch

from asyncor.learner.advantage import step_advantages
from asyncor.learner.batch import MicroBatch, MiniBatch, micro_batch, minibatch
from asyncor.learner.loss import LossInputs, LossSettings, policy_loss
from asyncor.learner.mismatch import Mismatch
from asyncor.learner.model import policy_logprobs
from asyncor.learner.packing import pack
from asyncor.learner.parallel import Ranks, full_tensor, release
from asyncor.learner.step_metrics import StepMetrics
from asyncor.learner.variants import Algorithm, algorithm


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
    loss_agg_tokens: int = 0  # the constant of loss_agg "seq_mean_token_sum_norm" (resolved by the learner)
    variants: Algorithm = field(init=False)

    def __post_init__(self):
        self.variants = algorithm(self.algo)
        self.loss_agg_tokens = self.loss_agg_tokens or self.algo.loss_agg_tokens


def train_step(policy, optimizer, groups, settings: UpdateSettings, controller, ranks: Ranks,
               reference=None, staleness: list[int] | None = None) -> dict:
    """Train on `groups` (every rank passes the same groups; `staleness`: each group's, default 0); returns this
    step's metrics (role/metric)."""
    plan = plan_step(groups, settings, ranks, staleness)
    before = pre_pass(policy, plan, ranks, settings) if plan.prepass else unobserved(plan)
    result = update(policy, optimizer, plan, before, settings, controller, ranks, reference)
    return step_report(plan, before, result, controller, len(groups), settings)


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


def plan_step(groups, settings: UpdateSettings, ranks: Ranks, staleness: list[int] | None = None) -> StepPlan:
    """The step's advantages (over all its groups, algo.advantage), then `groups` cut into mini-batches of
    algo.off_policy.minibatch_prompts groups (0: one) and those into this rank's micro-batches."""
    algo = settings.algo
    staleness = list(staleness) if staleness is not None else [0] * len(groups)
    advantages = step_advantages([g.rewards for g in groups],
                                 [[r.finish_reason == "length" for r in g.responses] for g in groups],
                                 settings.variants.advantage, algo.truncation_mask)
    size = algo.off_policy.minibatch_prompts or len(groups)
    minibatches = [minibatch(groups[i:i + size], advantages[i:i + size], settings.variants.loss_agg,
                             settings.loss_agg_tokens, staleness[i:i + size])
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
class MiniBatchBefore:
    """One mini-batch under the weights before the step's first update, over all its tokens (every rank holds
    the same): what the corrections, the objective's mask and the mismatch metrics read."""
    prox_M: torch.Tensor  # (M,) float32 log π_prox (the learner's log-prob before the update)
    log_ratio_M: torch.Tensor  # (M,) log π_prox - log μ
    is_weight_M: torch.Tensor  # (M,) the correction's weight c (1 for "none"); no gradient
    flagged_M: torch.Tensor  # (M,) bool: the correction masked or truncated the token
    mask_M: torch.Tensor | None  # (M,) the objective's own mask (M2PO), else None


@dataclass
class BatchBefore:
    """The batch under the weights before the step's first update."""
    stats: StepMetrics  # `observe`'s rank-local sums over every micro-batch, reduced over ranks once complete
    minibatches: list[MiniBatchBefore | None]  # [mini-batch], once its micro-batches have run


def unobserved(plan: StepPlan) -> BatchBefore:
    """No pre-pass: empty statistics, which the update's first forward fills (see `update`)."""
    return BatchBefore(StepMetrics(), [None] * len(plan.minibatches))


def pre_pass(policy, plan: StepPlan, ranks: Ranks, settings: UpdateSettings) -> BatchBefore:
    """No-grad forward of every micro-batch of this rank under the current weights (before any update)."""
    before = unobserved(plan)
    with torch.no_grad():
        for i, mbs in enumerate(plan.micro_batches):
            pieces = []
            for mb in mbs:
                logprob_N, entropy_N = policy_logprobs(policy, mb, ranks.device)
                observe(before.stats, entropy_N, mb, ranks.device)
                pieces.append((mb, logprob_N))
            before.minibatches[i] = minibatch_before(plan.minibatches[i], pieces, ranks, settings)
    release(policy)
    before.stats.reduce(ranks)
    return before


def observe(stats: StepMetrics, entropy_N, mb: MicroBatch, device) -> None:
    """Add `mb`'s rank-local statistics under the weights before this step's first update to `stats`."""
    with torch.no_grad():
        real_N = mb.real_N.to(device)
        stats.add(entropy=(entropy_N.detach() * real_N).sum(), tokens=real_N.sum(), slots=mb.slots,
                  real_tokens=mb.real_tokens, micro_batches=int(mb.real_tokens > 0))


def gather_tokens(size: int, pieces, ranks: Ranks) -> torch.Tensor:
    """The mini-batch's (M,) float32 vector from each micro-batch's (N,) values, over all ranks: every token
    comes from exactly one micro-batch of one rank, so a sum of zero-filled vectors places it exactly."""
    whole = torch.zeros(size, dtype=torch.float64)
    for mb, values_N in pieces:
        real = mb.real_N > 0
        whole[mb.index_N[real]] = values_N.detach().double().cpu()[real]
    return ranks.all_reduce(whole, "sum").float()


def minibatch_before(mb: MiniBatch, pieces, ranks: Ranks, settings: UpdateSettings) -> MiniBatchBefore:
    """The mini-batch before the update, from its micro-batches' log-probs (`pieces`: (MicroBatch, logprob_N))."""
    prox_M = gather_tokens(mb.tokens, pieces, ranks)
    log_ratio_M = prox_M - mb.behaviour_M()
    variants = settings.variants
    weight_M, flagged_M = variants.correction.weights(log_ratio_M, mb.seq_M(), settings.algo.off_policy)
    mask_M = variants.objective_mask(log_ratio_M, settings) if variants.objective_mask else None
    return MiniBatchBefore(prox_M, log_ratio_M, weight_M.float(), flagged_M, mask_M)


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

    Without a pre-pass (`plan.prepass` false: one mini-batch, one micro-batch per rank, one pass) the first
    forward fills `before`: it is then the step's only forward and sees the whole batch under the initial
    weights. α is set on the first micro-batch, once the batch's entropy before the step is known
    (`step_objective`)."""
    algo, device = settings.algo, ranks.device
    objective = None  # LossSettings, once α is known
    kl_to_reference = reference is not None and algo.kl_coef > 0
    metrics, grad_norms = StepMetrics(), []
    for _ in range(plan.reuse):
        for i, mbs in enumerate(plan.micro_batches):
            optimizer.zero_grad(set_to_none=True)
            for mb in mbs:
                logprob_N, entropy_N = policy_logprobs(policy, mb, device)
                if before.minibatches[i] is None:  # no pre-pass: this is the only forward
                    observe(before.stats, entropy_N, mb, device)
                    before.minibatches[i] = minibatch_before(plan.minibatches[i], [(mb, logprob_N)], ranks, settings)
                    before.stats.reduce(ranks)
                if objective is None:
                    objective = step_objective(before.stats, settings, controller)
                ref_N = reference_logprobs(reference, mb, device) if kl_to_reference else None
                inputs = loss_inputs(logprob_N, entropy_N, mb, before.minibatches[i], ref_N, settings, plan.recompute,
                                     device)
                loss, stats = policy_loss(inputs, objective, settings.variants.objective)
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
    return LossSettings(settings.eps_low, settings.eps_high, alpha, settings.algo.kl_coef, settings.algo)


def reference_logprobs(reference, mb: MicroBatch, device) -> torch.Tensor:
    """log π_ref (N,) of `mb`'s response tokens, without gradient."""
    with torch.no_grad():
        ref_N, _ = policy_logprobs(reference, mb, device)
    release(reference)
    return ref_N


def loss_inputs(logprob_N, entropy_N, mb: MicroBatch, before: MiniBatchBefore, ref_N, settings: UpdateSettings,
                recompute: bool, device) -> LossInputs:
    """The loss's view of micro-batch `mb`: this forward's log-prob and entropy, its data, and its tokens' share
    of the mini-batch's values before the update (π_prox, the correction's weight, the objective's mask)."""
    def mine(values_M):  # this micro-batch's tokens of a mini-batch vector (a filler's: zeros, weighing nothing)
        if values_M.numel() == 0:
            return torch.zeros(mb.index_N.shape, dtype=values_M.dtype, device=device)
        return values_M[mb.index_N].to(device)

    correct = settings.algo.correction != "none"
    return LossInputs(
        logprob_N=logprob_N, entropy_N=entropy_N,
        old_logprob_N=mine(before.prox_M) if recompute else mb.behaviour_logprob_N.to(device),
        advantage_N=mb.advantage_N.to(device), weight_N=mb.weight_N.to(device), real_N=mb.real_N.to(device),
        seq_N=mb.seq_N.to(device), num_seqs=mb.num_seqs,
        is_weight_N=mine(before.is_weight_M) if correct else None,
        mask_N=mine(before.mask_M) if before.mask_M is not None else None,
        ref_logprob_N=ref_N)


# --- metrics ---

def step_report(plan: StepPlan, before: BatchBefore, result: UpdateResult, controller, n_groups: int,
                settings: UpdateSettings) -> dict:
    """The step's metrics (role/metric) from the statistics before the step and those of its updates."""
    metrics, n_sgd, minibatches, stats = result.metrics, plan.sgd_steps, plan.minibatches, before.stats
    tokens = max(stats.sum("tokens"), 1)
    lengths = np.concatenate([mb.lengths for mb in minibatches])
    truncated = np.concatenate([mb.truncated for mb in minibatches])
    count = max(metrics.sum("ratio_count"), 1)
    values = {
        "learner/loss": metrics.sum("loss") / n_sgd,
        "learner/grad_norm": float(torch.stack(result.grad_norms).float().mean()),
        "learner/sgd_steps": n_sgd,
        "learner/micro_batches": int(stats.sum("micro_batches")),
        # Share of the computed token positions that were padding (0 when packed, but for empty-rank fillers).
        "learner/padding_frac": 1.0 - stats.sum("real_tokens") / max(stats.sum("slots"), 1),
        # Token-weighted full-vocabulary entropy of the batch before the step: what the controller saw.
        "learner/entropy": stats.sum("entropy") / tokens,
        "learner/entropy_coef": controller.coef,
        "learner/entropy_bonus": result.alpha,
        # Share of the trained tokens (over every SGD step) whose clip bound was the active branch.
        "learner/clip_frac_low": metrics.sum("clip_low") / count,
        "learner/clip_frac_high": metrics.sum("clip_high") / count,
        "learner/is_ratio_mean": metrics.sum("ratio_sum") / count,
        "learner/is_ratio_min": metrics.min("ratio_min"),
        "learner/is_ratio_max": metrics.max("ratio_max"),
        "learner/tokens": int(lengths.sum()),
        "learner/groups": n_groups,
        "learner/samples_per_group_mean": len(lengths) / max(n_groups, 1),
        "learner/response_len_mean": float(lengths.mean()),
        "learner/response_len_max": int(lengths.max()),
        "learner/truncation_rate": float(truncated.mean()),
        "reward/mean": float(np.concatenate([mb.rewards for mb in minibatches]).mean()),
    }
    # The trainer-inference mismatch before the step, in all and by staleness (learner/mismatch.py).
    mismatch = Mismatch(settings.algo.off_policy.is_cap)
    for mb, b in zip(minibatches, before.minibatches):
        mismatch.add(b.log_ratio_M, b.is_weight_M, b.flagged_M, b.mask_M, mb.staleness_M())
    values.update(mismatch.metrics(correction=settings.algo.correction != "none"))
    if "kl_ref" in metrics:
        values["learner/kl_ref"] = metrics.sum("kl_ref") / n_sgd
    return values
