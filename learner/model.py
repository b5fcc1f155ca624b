"""Load the policy for training: a transformers causal LM with the right attention."""

from __future__ import annotations

import importlib.util

import torch

from configs.schema import ModelConfig


def attention_implementation(setting: str, device: torch.device) -> str:
    """auto: flash_attention_2 on CUDA when flash-attn is installed, sdpa otherwise."""
    if setting != "auto":
        if setting == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ValueError("model.attn_implementation = flash_attention_2 but flash-attn is not installed "
                             "(pip install asyncor[gpu]); use auto or sdpa")
        return setting
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_policy(cfg: ModelConfig, device: torch.device):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        cfg.path, dtype=getattr(torch, cfg.dtype), attn_implementation=attention_implementation(cfg.attn_implementation, device)
    )
    return model.to(device)
