"""Per-token log-prob of the target and full-vocabulary entropy, from hidden states.

`logprob_entropy(hidden_NH, weight_VH, target_N, temperature)` computes, for
logits z = hidden @ weight.T / temperature (never materialised for all N at
once):
    logprob_N = z[target] - logsumexp(z)
    entropy_N = -sum softmax(z) * log softmax(z)
in float32 whatever the input dtype (bf16 / fp16 / fp32, fp32 accumulation).
Both outputs are differentiable with respect to hidden and weight, with any
mix of upstream gradients. Tokens whose target is `ignore_index` get 0 for
both outputs and no gradient.

Two implementations behind one signature, picked by `impl`:
* "triton" — fused kernels (kernels/logprob_entropy_triton.py): one pass over
  the vocabulary with an online max / sum-exp / expectation; the backward
  recomputes logits tile by tile. CUDA, or CPU under TRITON_INTERPRET=1.
* "torch"  — chunked torch with checkpointing (kernels/logprob_entropy_torch.py).
* "auto"   — triton on CUDA, torch elsewhere.
Memory beyond inputs, outputs and gradients: O(N) plus a bounded workspace (triton), O(N + chunk·V) for the
torch path (plus, on CPU with bf16 / fp16, an fp32 copy of the weight and of its per-chunk gradient).
"""

from __future__ import annotations

import importlib.util
import os

import torch

IMPLS = ("auto", "triton", "torch")


def triton_available(device: torch.device) -> bool:
    """Whether the Triton kernels can run on `device` (CUDA, or the CPU interpreter)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def resolve_impl(impl: str, device: torch.device) -> str:
    """The implementation `impl` means on `device`; errors name what would work."""
    if impl not in IMPLS:
        raise ValueError(f"logprob impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if device.type == "cuda" and triton_available(device) else "torch"
    if impl == "triton" and not triton_available(device):
        raise ValueError(f"logprob impl 'triton' needs CUDA and the triton package (or TRITON_INTERPRET=1 on CPU); "
                         f"the device is {device.type}: use 'torch' or 'auto'")
    return impl


def _validate(hidden_NH, weight_VH, target_N, temperature, ignore_index):
    if hidden_NH.ndim != 2 or weight_VH.ndim != 2 or hidden_NH.shape[1] != weight_VH.shape[1]:
        raise ValueError(f"shapes hidden {tuple(hidden_NH.shape)} and weight {tuple(weight_VH.shape)} "
                         f"do not match (N, H) x (V, H)")
    if target_N.shape != hidden_NH.shape[:1]:
        raise ValueError(f"target shape {tuple(target_N.shape)} != ({hidden_NH.shape[0]},)")
    if target_N.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"target must be int32 or int64, got {target_N.dtype}")
    if hidden_NH.dtype != weight_VH.dtype:
        raise ValueError(f"hidden ({hidden_NH.dtype}) and weight ({weight_VH.dtype}) must share a dtype")
    if hidden_NH.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(f"unsupported dtype {hidden_NH.dtype}: use float32, bfloat16 or float16")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    V = weight_VH.shape[0]
    bad = ((target_N < 0) | (target_N >= V)) & (target_N != ignore_index)
    if target_N.numel() and bool(bad.any()):
        raise ValueError(f"targets must lie in [0, {V}) or equal ignore_index={ignore_index}; "
                         f"got {target_N[bad][:5].tolist()}")


def logprob_entropy(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, target_N: torch.Tensor,
                    temperature: float = 1.0, *, impl: str = "auto", chunk: int = 4096,
                    ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprob_N, entropy_N), float32, differentiable w.r.t. hidden and weight.

    `chunk` (tokens per step) applies to the torch path; the Triton path bounds
    its memory by its own tiles and workspace.
    """
    _validate(hidden_NH, weight_VH, target_N, temperature, ignore_index)
    which = resolve_impl(impl, hidden_NH.device)
    if which == "triton" and hidden_NH.dtype == torch.float64:
        raise ValueError("the triton path takes float32, bfloat16 or float16, not float64")
    if which == "triton":
        from asyncor.kernels.logprob_entropy_triton import logprob_entropy_triton
        return logprob_entropy_triton(hidden_NH, weight_VH, target_N, temperature, ignore_index)
    from asyncor.kernels.logprob_entropy_torch import logprob_entropy_torch
    return logprob_entropy_torch(hidden_NH, weight_VH, target_N, temperature, ignore_index, chunk)
