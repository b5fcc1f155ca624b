"""A LoRA adapter on disk, in peft's format: `adapter_config.json` + `adapter_model.safetensors`.

Written by the learner into checkpoints (`<checkpoint>/adapter/`) and next to the final merged model
(`final/adapter/`); read back by a resumed learner and actor, by `launch.py eval` and `launch.py export`.
peft (`PeftModel.from_pretrained`) and vLLM (`LoRARequest`) load the same directory. Tensor names are
peft's (`base_model.model.<module>.lora_A.weight`); the weights are safetensors, never a pickle.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


class AdapterFileError(ValueError):
    pass


@dataclass
class AdapterSettings:
    rank: int
    alpha: float
    dropout: float
    targets: list[str]
    base: str  # base_model_name_or_path: the model the adapter was trained on


def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG))


def write_adapter(out_dir: str, tensors: dict, settings: AdapterSettings) -> None:
    """The adapter (`tensors`: peft names -> CPU tensors) as a peft directory."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": settings.rank, "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "target_modules": "all-linear" if settings.targets == ["all-linear"] else list(settings.targets),
        "base_model_name_or_path": settings.base, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "inference_mode": True, "modules_to_save": None, "init_lora_weights": True,
    }
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, os.path.join(out_dir, WEIGHTS),
              metadata={"format": "pt"})
    with open(os.path.join(out_dir, CONFIG), "w") as f:
        json.dump(config, f, indent=2)


def read_adapter(path: str) -> tuple[AdapterSettings, dict]:
    """(settings, tensors) of a peft LoRA directory; AdapterFileError names what is wrong."""
    from safetensors.torch import load_file

    try:
        with open(os.path.join(path, CONFIG)) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise AdapterFileError(f"{path}: no {CONFIG}, not a peft adapter directory") from None
    except (OSError, ValueError) as exc:
        raise AdapterFileError(f"{path}/{CONFIG} does not parse: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterFileError(f"{path}/{CONFIG} holds a {type(config).__name__}, not a peft adapter config")
    if config.get("peft_type") != "LORA":
        raise AdapterFileError(f"{path}/{CONFIG}: peft_type is {config.get('peft_type')!r}, only LORA is supported")
    if config.get("use_rslora") or config.get("use_dora"):
        raise AdapterFileError(f"{path}/{CONFIG}: rsLoRA / DoRA adapters are not supported (plain LoRA only)")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise AdapterFileError(f"{path}/{CONFIG}: r = {rank!r} and lora_alpha = {alpha!r} must be positive numbers")
    targets = config.get("target_modules")
    targets = [targets] if isinstance(targets, str) else targets
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise AdapterFileError(f"{path}/{CONFIG}: target_modules = {config.get('target_modules')!r} is not a list of "
                               "module names")
    weights = os.path.join(path, WEIGHTS)
    if not os.path.isfile(weights):
        raise AdapterFileError(f"{path}: no {WEIGHTS} (adapters are read from safetensors only, never a pickle)")
    settings = AdapterSettings(rank, float(alpha), float(config.get("lora_dropout") or 0.0), targets,
                               str(config.get("base_model_name_or_path") or ""))
    return settings, load_file(weights)


MODEL_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
               "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")  # beside a model's weights


def copy_model_files(src: str, dst: str) -> None:
    """The tokenizer and generation files of `src` (a model directory) that `dst` lacks."""
    import shutil

    for name in MODEL_FILES:
        if os.path.exists(os.path.join(src, name)) and not os.path.exists(os.path.join(dst, name)):
            shutil.copy(os.path.join(src, name), dst)


def write_merged(base_dir: str, settings: AdapterSettings, tensors: dict, out_dir: str, dtype: str = "") -> str:
    """The base model of `base_dir` with the adapter merged (W + alpha/r * B @ A), as a plain Hugging Face
    directory that transformers and vLLM load: `model.safetensors` in `dtype` (default: the base's), the base's
    config (dtype updated) and tokenizer files. Written to `<out_dir>.tmp` and renamed into place. Returns
    `out_dir`."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from asyncor.runtime.adapter import Adapter

    adapter = Adapter.from_model_dir(base_dir, settings.rank, settings.alpha, settings.targets)
    merged = dict(adapter.merge(list(tensors.items())))
    if dtype:
        merged = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in merged.items()}
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file({k: v.contiguous() for k, v in merged.items()}, os.path.join(tmp, "model.safetensors"),
              metadata={"format": "pt"})
    shutil.copy(os.path.join(base_dir, "config.json"), tmp)
    copy_model_files(base_dir, tmp)
    if dtype:
        path = os.path.join(tmp, "config.json")
        with open(path) as f:
            config = json.load(f)
        config["torch_dtype"] = config["dtype"] = dtype
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
