"""The algorithm variants a config picks, loaded by name from the registry (configs/algorithms.py).

    objective   learner/objectives/<name>.py   per_token_loss(ObjectiveInputs, LossSettings) -> ObjectiveTerms;
                                               optional token_mask(log_ratio_M, LossSettings) -> (M,) mask,
                                               once per mini-batch from log π_θ/μ before the update
    advantage   learner/advantages/<name>.py   advantages(list of per-group rewards) -> same shapes, over the
                                               training step's whole batch
    correction  learner/corrections/<name>.py  weights(log_ratio_M, seq_M, off_policy) -> (weight_M, flagged_M),
                                               over a mini-batch, from log π_prox/μ
    loss_agg    learner/loss_aggs/<name>.py    token_weights(lengths, constant) -> per-token share of the loss

The training loop (learner/update.py) calls these and nothing else of a variant.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from asyncor.configs.algorithms import REGISTRY

INTERFACE = {"objective": ("per_token_loss",), "advantage": ("advantages",), "correction": ("weights",),
             "loss_agg": ("token_weights",)}


def load(kind: str, name: str) -> ModuleType:
    """The module of variant `name` of `kind` ("objective", "advantage", "correction", "loss_agg")."""
    if name not in REGISTRY[kind]:
        raise ValueError(f"algo.{kind} must be one of {list(REGISTRY[kind])}, got {name!r}")
    module = importlib.import_module(REGISTRY[kind][name].module)
    missing = [f for f in INTERFACE[kind] if not callable(getattr(module, f, None))]
    if missing:
        raise TypeError(f"{module.__name__} (algo.{kind} = {name!r}) lacks {missing}")
    return module


@dataclass(frozen=True)
class Algorithm:
    """The four variants of one run."""
    objective: ModuleType
    advantage: ModuleType
    correction: ModuleType
    loss_agg: ModuleType

    @property
    def objective_mask(self):
        """The objective's `token_mask`, or None."""
        return getattr(self.objective, "token_mask", None)


def algorithm(algo) -> Algorithm:
    """The variants `algo` (configs.schema.AlgoConfig) picks."""
    return Algorithm(load("objective", algo.objective), load("advantage", algo.advantage),
                     load("correction", algo.correction), load("loss_agg", algo.loss_agg))
