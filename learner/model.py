"""The policy the learner trains: a transformers causal LM plus the fused log-prob / entropy head.

`Policy.forward` takes one micro-batch's tensors and returns the log-prob and
full-vocabulary entropy of its response tokens: the decoder body runs on the
(packed or padded) rows, only the hidden states that predict response tokens
are gathered ([N, H], never a [B, T, V] of logits), and the lm_head runs inside
the fused kernel (kernels/logprob_entropy.py). Wrapping both in one module
makes it the root of FSDP sharding (learner/parallel.py): embeddings, final
norm and lm_head are gathered for its forward and their gradients reduced
after its backward.
"""

from __future__ import annotations

import importlib.util

import torch

from asyncor.configs.schema import ModelConfig
from asyncor.kernels.logprob_entropy import logprob_entropy
from asyncor.learner.batch import MicroBatch


def attention_implementation(setting: str, device: torch.device) -> str:
    """auto: flash_attention_2 on CUDA when flash-attn is installed, sdpa otherwise.

    All three take packed rows exactly: flash_attention_2 runs varlen from the position ids, sdpa and eager get
    the block-diagonal causal mask transformers builds from them (tests/unit/test_packing.py)."""
    if setting != "auto":
        if setting == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ValueError("model.attn_implementation = flash_attention_2 but flash-attn is not installed "
                             "(pip install asyncor[gpu]); use auto or sdpa")
        return setting
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_causal_lm(cfg: ModelConfig, device: torch.device, dtype: torch.dtype = torch.float32, path: str = ""):
    """The model at `path` (default `cfg.path`) in `dtype` (the learner's fp32 master weights by default)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path or cfg.path, dtype=dtype, attn_implementation=attention_implementation(cfg.attn_implementation, device)
    )
    return model.to(device)


class Policy(torch.nn.Module):
    def __init__(self, lm, temperature: float, impl: str, chunk: int):
        super().__init__()
        self.lm = lm
        self.temperature = temperature
        self.impl = impl
        self.chunk = chunk

    def forward(self, input_ids_BT, position_ids_BT, attention_mask_BT, row_N, col_N, target_N):
        hidden_BTH = self.lm.model(input_ids=input_ids_BT, position_ids=position_ids_BT,
                                   attention_mask=attention_mask_BT, use_cache=False).last_hidden_state
        return logprob_entropy(hidden_BTH[row_N, col_N], self.lm.lm_head.weight, target_N, self.temperature,
                               impl=self.impl, chunk=self.chunk)


def policy_logprobs(policy: Policy, mb: MicroBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob and entropy (float32, (N,)) of every response token of `mb` under `policy`."""
    mask = None if mb.attention_mask_BT is None else mb.attention_mask_BT.to(device)
    return policy(mb.input_ids_BT.to(device), mb.position_ids_BT.to(device), mask, mb.row_N.to(device),
                  mb.col_N.to(device), mb.target_N.to(device))
