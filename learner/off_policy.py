"""Importance corrections for data from an older or different policy (μ: the actors' vLLM).

π_prox is the learner's policy before the step's first update (recomputed
log-probs). The PPO ratio then runs against π_prox, and the mismatch between
π_prox and μ (staleness, vLLM vs trainer numerics) is corrected per token:
  "none"      - weight 1 (the PPO ratio's denominator is whatever old_logprobs says);
  "tis"       - truncated importance sampling: w = min(π_prox / μ, C);
  "decoupled" - AReaL's decoupled PPO: w = π_prox / μ, tokens with w > C dropped.
Weights carry no gradient.
"""

from __future__ import annotations

import torch

CORRECTIONS = ("none", "tis", "decoupled")


def behaviour_weights(prox_logprob_N: torch.Tensor | None, behaviour_logprob_N: torch.Tensor, correction: str,
                      cap: float) -> torch.Tensor | None:
    """Per-token weights, or None for "none"."""
    if correction == "none":
        return None
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    if prox_logprob_N is None:
        raise ValueError(f"correction {correction!r} needs recomputed proximal log-probs")
    w = torch.exp(prox_logprob_N.detach() - behaviour_logprob_N)
    if correction == "tis":
        return w.clamp(max=cap)
    return torch.where(w > cap, torch.zeros_like(w), w)
