"""LoRA in the learner ([learner.lora], peft): adapters on the policy's linear layers, the rest frozen.

`apply_lora` injects peft's LoRA layers into the transformers model in place, so `Policy` (learner/model.py),
packing, micro-batches, the fused log-prob head and FSDP2 (learner/parallel.py, one unit per decoder layer
holding frozen and trainable parameters) see the same module tree with a few more parameters: only the
adapter tensors require gradients, and only they go into the optimiser, the broadcast
(learner/weight_sync.py) and checkpoints. Their names in the module are peft's internal ones
(`model.layers.0.self_attn.q_proj.lora_A.default.weight`); `adapter_named` gives them under the names of
peft's saved format (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), which is what
travels, what the actor checks (runtime/adapter.py), what checkpoints hold (runtime/adapter_files.py) and what
peft and vLLM load.
"""

from __future__ import annotations

import torch

from asyncor.configs.schema import LoraConfig
from asyncor.runtime.adapter_files import AdapterSettings
from asyncor.runtime.adapter import PREFIX

ADAPTER_NAME = "default"


def apply_lora(lm, cfg: LoraConfig):
    """Add LoRA adapters to `lm` (in place; returned): A random (peft's Kaiming init), B zero, so the policy starts
    exactly as the base; every base parameter frozen."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    peft_config = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                 target_modules=targets, bias="none", task_type="CAUSAL_LM")
    get_peft_model(lm, peft_config, adapter_name=ADAPTER_NAME)  # injects into `lm` itself; the wrapper is not kept
    return lm


def peft_name(param_name: str) -> str:
    """`model.layers.0.self_attn.q_proj.lora_A.default.weight` -> peft's saved name of that tensor."""
    return PREFIX + param_name.replace(f".{ADAPTER_NAME}.", ".")


def param_name(saved_name: str) -> str:
    """The inverse of `peft_name`."""
    name = saved_name[len(PREFIX):] if saved_name.startswith(PREFIX) else saved_name
    for part in ("lora_A", "lora_B"):
        name = name.replace(f".{part}.weight", f".{part}.{ADAPTER_NAME}.weight")
    return name


def adapter_named(lm) -> list[tuple[str, torch.Tensor]]:
    """The trainable (adapter) parameters of `lm` under peft's saved names, sharded or not."""
    return [(peft_name(n), p) for n, p in lm.named_parameters() if p.requires_grad]


def settings(cfg: LoraConfig, base: str) -> AdapterSettings:
    return AdapterSettings(cfg.rank, cfg.alpha, cfg.dropout, list(cfg.target_modules), base)


def load_adapter_weights(lm, tensors: dict) -> None:
    """Copy a saved adapter (peft names) into `lm`'s adapter parameters (each rank its shard, when sharded);
    ValueError when the names or shapes differ from the model's adapter."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = dict(lm.named_parameters())
    wanted = {param_name(k): v for k, v in tensors.items()}
    trainable = {n for n, p in params.items() if p.requires_grad}
    if set(wanted) != trainable:
        missing, extra = sorted(trainable - set(wanted)), sorted(set(wanted) - trainable)
        raise ValueError(f"the saved adapter does not fit [learner.lora]: missing {missing[:3]}, unexpected "
                         f"{extra[:3]} (were rank or target_modules changed since the checkpoint?)")
    with torch.no_grad():
        for name, value in wanted.items():
            p = params[name]
            if tuple(p.shape) != tuple(value.shape):
                raise ValueError(f"the saved adapter's {name} has shape {tuple(value.shape)}, the model's "
                                 f"{tuple(p.shape)} (was learner.lora.rank changed?)")
            value = value.to(device=p.device, dtype=p.dtype)
            if isinstance(p, DTensor):
                p.copy_(distribute_tensor(value, p.device_mesh, p.placements))
            else:
                p.copy_(value)
