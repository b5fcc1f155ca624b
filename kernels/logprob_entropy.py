"""Per-token log-prob of the target and full-vocabulary entropy, from hidden states.

`logprob_entropy(hidden_NH, weight_VH, target_N, temperature)` computes, for
logits z = hidden @ weight.T / temperature (never materialised for all N at
once):
    logprob_N = z[target] - logsumexp(z)
    entropy_N = logsumexp(z - m) - sum softmax(z) * (z - m)     (m = row max)
in float32 whatever the input dtype. Entropy is accumulated on max-shifted
logits, so it has no cancellation when it is near zero.

This is the chunked pure-torch implementation (CPU path and reference): the
tokens are processed `chunk` at a time under activation checkpointing, so
forward and backward hold O(chunk x V) logits, not O(N x V). The fused Triton
kernels (issue #3) plug in behind the same signature.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def _chunk(hidden_CH: torch.Tensor, weight_VH: torch.Tensor, target_C: torch.Tensor, temperature: float):
    logits_CV = (hidden_CH @ weight_VH.T).float() / temperature
    shifted_CV = logits_CV - logits_CV.max(dim=-1, keepdim=True).values.detach()
    lse_C = torch.logsumexp(shifted_CV, dim=-1)
    logprob_C = shifted_CV.gather(1, target_C[:, None]).squeeze(1) - lse_C
    probs_CV = torch.exp(shifted_CV - lse_C[:, None])
    entropy_C = lse_C - (probs_CV * shifted_CV).sum(dim=-1)
    return logprob_C, entropy_C


def logprob_entropy(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, target_N: torch.Tensor,
                    temperature: float = 1.0, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprob_N, entropy_N), float32, differentiable w.r.t. hidden and weight."""
    if hidden_NH.ndim != 2 or weight_VH.ndim != 2 or hidden_NH.shape[1] != weight_VH.shape[1]:
        raise ValueError(f"shapes hidden {tuple(hidden_NH.shape)} and weight {tuple(weight_VH.shape)} do not match (N,H) x (V,H)")
    if target_N.shape != hidden_NH.shape[:1]:
        raise ValueError(f"target shape {tuple(target_N.shape)} != ({hidden_NH.shape[0]},)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    needs_grad = torch.is_grad_enabled() and (hidden_NH.requires_grad or weight_VH.requires_grad)
    logprobs, entropies = [], []
    for start in range(0, hidden_NH.shape[0], chunk):
        args = (hidden_NH[start:start + chunk], weight_VH, target_N[start:start + chunk], temperature)
        lp, ent = checkpoint(_chunk, *args, use_reentrant=False) if needs_grad else _chunk(*args)
        logprobs.append(lp)
        entropies.append(ent)
    if not logprobs:
        empty = hidden_NH.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(logprobs), torch.cat(entropies)
