"""The trainer-inference mismatch of a training step, in all and split by staleness.

Before the step's first update the learner has log π_prox of every trained token (its own weights, recomputed)
and the actors' log μ (vLLM's, under the policy version that generated it). Their gap is the mismatch the
rollout corrections exist for: at staleness 0 it is numerics alone (vLLM kernels against the learner's), at
staleness k it adds k versions of policy drift. Per step (`metrics`):

    learner/mismatch_abs_mean, _p99, _max    |log π_prox - log μ| over tokens
    learner/mismatch_kl                      k3 estimate of KL(μ || π_prox): r - 1 - log r, r = π_prox/μ
    learner/behaviour_over_cap_frac          share of tokens with π_prox/μ > algo.off_policy.is_cap
    learner/correction_frac                  share the rollout correction masked or truncated (0 for "none")
    learner/is_weight_mean                   the correction's mean weight (only with a correction)
    learner/objective_masked_frac            share the objective's own mask dropped (M2PO only)
    and each of these but is_weight_mean again as `<name>_s<k>` for the tokens of staleness k, with
    learner/tokens_s<k>, for every staleness present in the step.

Every rank holds the same gathered vectors (learner/update.py `minibatch_before`), so nothing is reduced here.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class Mismatch:
    def __init__(self, is_cap: float):
        self.log_cap = math.log(is_cap)
        self._log_ratio, self._weight, self._flagged, self._masked, self._staleness = [], [], [], [], []

    def add(self, log_ratio_M: torch.Tensor, weight_M: torch.Tensor, flagged_M: torch.Tensor,
            mask_M: torch.Tensor | None, staleness_M: np.ndarray) -> None:
        """One mini-batch's tokens."""
        self._log_ratio.append(log_ratio_M.double().cpu().numpy())
        self._weight.append(weight_M.double().cpu().numpy())
        self._flagged.append(flagged_M.cpu().numpy().astype(bool))
        self._masked.append(None if mask_M is None else (mask_M.cpu().numpy() == 0))
        self._staleness.append(np.asarray(staleness_M, np.int64))

    def metrics(self, correction: bool) -> dict:
        if not self._log_ratio:
            return {}
        log_ratio = np.concatenate(self._log_ratio)
        columns = {"weight": np.concatenate(self._weight), "flagged": np.concatenate(self._flagged)}
        if all(m is not None for m in self._masked):
            columns["masked"] = np.concatenate(self._masked)
        staleness = np.concatenate(self._staleness)
        values = _figures(log_ratio, columns, self.log_cap, correction, "")
        for k in np.unique(staleness):
            at = staleness == k
            values.update(_figures(log_ratio[at], {c: v[at] for c, v in columns.items()}, self.log_cap, False,
                                   f"_s{int(k)}"))
            values[f"learner/tokens_s{int(k)}"] = int(at.sum())
        return values


def _figures(log_ratio: np.ndarray, columns: dict, log_cap: float, weight_mean: bool, suffix: str) -> dict:
    if log_ratio.size == 0:
        return {}
    gap = np.abs(log_ratio)
    r = np.exp(np.minimum(log_ratio, 50.0))  # the KL estimate of a wildly off token stays finite
    out = {
        f"learner/mismatch_abs_mean{suffix}": float(gap.mean()),
        f"learner/mismatch_abs_p99{suffix}": float(np.percentile(gap, 99)),
        f"learner/mismatch_abs_max{suffix}": float(gap.max()),
        f"learner/mismatch_kl{suffix}": float(np.mean(r - 1 - np.minimum(log_ratio, 50.0))),
        f"learner/behaviour_over_cap_frac{suffix}": float((log_ratio > log_cap).mean()),
        f"learner/correction_frac{suffix}": float(columns["flagged"].mean()),
    }
    if weight_mean:
        out[f"learner/is_weight_mean{suffix}"] = float(columns["weight"].mean())
    if "masked" in columns:
        out[f"learner/objective_masked_frac{suffix}"] = float(columns["masked"].mean())
    return out
