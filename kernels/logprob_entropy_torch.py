"""Chunked pure-torch log-prob + entropy: the CPU path (and "torch" on CUDA). Both it and the Triton kernels
are checked against the naive path in float64 (kernels/logprob_entropy_naive.py,
tests/unit/test_logprob_entropy.py).

Tokens are processed `chunk` at a time under activation checkpointing, so
forward and backward hold O(chunk x V) fp32 logits, never O(N x V). Entropy is
accumulated on max-shifted logits (no cancellation when it is near zero).
On CUDA, bf16/fp16 logits come out of the GEMM in the input dtype and are then
upcast (as in verl's and Liger's torch paths); on CPU the GEMM runs in fp32.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def _chunk(hidden_CH, weight_VH, target_C, valid_C, inv_temperature: float):
    if hidden_CH.device.type == "cpu" and hidden_CH.dtype in (torch.float16, torch.bfloat16):
        # CPU matmuls round their output to the input dtype: accumulate in fp32 instead.
        hidden_CH, weight_VH = hidden_CH.float(), weight_VH.float()
    logits_CV = (hidden_CH @ weight_VH.T).float() * inv_temperature
    shifted_CV = logits_CV - logits_CV.max(dim=-1, keepdim=True).values.detach()
    lse_C = torch.logsumexp(shifted_CV, dim=-1)
    logprob_C = shifted_CV.gather(1, target_C[:, None]).squeeze(1) - lse_C
    probs_CV = torch.exp(shifted_CV - lse_C[:, None])
    entropy_C = (lse_C - (probs_CV * shifted_CV).sum(dim=-1)).clamp_min(0.0)
    return torch.where(valid_C, logprob_C, 0.0), torch.where(valid_C, entropy_C, 0.0)


def logprob_entropy_torch(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, target_N: torch.Tensor,
                          temperature: float, ignore_index: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked torch path; inputs already validated by kernels.logprob_entropy."""
    valid_N = target_N != ignore_index
    safe_target_N = torch.where(valid_N, target_N, 0)
    needs_grad = torch.is_grad_enabled() and (hidden_NH.requires_grad or weight_VH.requires_grad)
    logprobs, entropies = [], []
    for start in range(0, hidden_NH.shape[0], chunk):
        part = slice(start, start + chunk)
        args = (hidden_NH[part], weight_VH, safe_target_N[part], valid_N[part], 1.0 / temperature)
        lp, ent = checkpoint(_chunk, *args, use_reentrant=False) if needs_grad else _chunk(*args)
        logprobs.append(lp)
        entropies.append(ent)
    if not logprobs:
        empty = hidden_NH.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(logprobs), torch.cat(entropies)
