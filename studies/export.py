"""`launch.py export`: a trained policy as one plain Hugging Face model directory (transformers and vLLM load it).

    python launch.py export runs/tiny-lora --out exported/          # the run's newest checkpoint
    python launch.py export runs/tiny-lora/checkpoints/step_000100 --out exported/ --dtype bfloat16
    python launch.py export runs/tiny-lora/final/adapter --out exported/ --base runs/cache/warm-...

What it takes: a run directory (its newest complete checkpoint), a checkpoint directory, or a LoRA adapter
directory in peft's format (`adapter_config.json` + `adapter_model.safetensors`, e.g. `final/adapter/` or any
peft adapter). An adapter is merged into its base (W + alpha/r * B @ A, float32, written in `--dtype`, default
the base's); the base is `--base`, else the adapter's `base_model_name_or_path` (the run's model.path). A
full-weight checkpoint's `model/` is already such a directory: it is copied (cast to `--dtype` if given).
`launch.py eval --model` takes an adapter or a LoRA checkpoint too (`merged_model`): merged into a temporary
directory first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile

from asyncor.runtime.adapter_files import AdapterFileError, copy_model_files, is_adapter_dir, read_adapter, write_merged
from asyncor.runtime.run_dir import ADAPTER, MODEL, META, CheckpointError, RunDir, read_meta


def _is_model_dir(path: str) -> bool:
    """A Hugging Face model directory: its config.json names a model_type (a run's config.json does not)."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            return "model_type" in json.load(f)
    except (OSError, ValueError, TypeError):
        return False


def find_weights(path: str) -> tuple[str, bool]:
    """(directory, is_adapter) of what `path` names: an adapter directory, a model directory, a checkpoint, or a run
    (its newest complete checkpoint). ValueError says what was expected."""
    path = os.path.normpath(path)
    if is_adapter_dir(path):
        return path, True
    if not os.path.exists(os.path.join(path, META)):
        found = RunDir(path).complete() if os.path.isdir(os.path.join(path, "checkpoints")) else []
        if found:
            path = found[-1]
        elif _is_model_dir(path):
            return path, False
        else:
            raise ValueError(f"{path}: not a model directory, a peft adapter directory, a checkpoint, or a run "
                             "with a complete checkpoint")
    try:
        meta = read_meta(path)
    except CheckpointError as exc:
        raise ValueError(str(exc)) from None
    return (os.path.join(path, ADAPTER), True) if meta.get("lora") else (os.path.join(path, MODEL), False)


def export(path: str, out: str, base: str = "", dtype: str = "") -> str:
    """Write the policy `path` names as a Hugging Face directory at `out`; returns `out`."""
    weights, adapter = find_weights(path)
    if not adapter:
        if dtype:
            import torch
            from transformers import AutoModelForCausalLM

            AutoModelForCausalLM.from_pretrained(weights, dtype=getattr(torch, dtype)).save_pretrained(out)
            copy_model_files(weights, out)
        else:
            shutil.copytree(weights, out, dirs_exist_ok=True)
        return out
    settings, tensors = read_adapter(weights)
    base = base or settings.base
    if not base or not os.path.exists(os.path.join(base, "config.json")):
        raise ValueError(f"{weights}: its base model {base!r} is not a model directory here; pass --base DIR (the "
                         "model the adapter was trained on: the run's model.path)")
    return write_merged(base, settings, tensors, out, dtype)


@contextlib.contextmanager
def merged_model(path: str, base: str = ""):
    """A model directory for `path`: itself when it is one; an adapter or LoRA checkpoint merged into a temporary
    directory (removed afterwards)."""
    weights, adapter = find_weights(path)
    if not adapter:
        yield weights
        return
    tmp = tempfile.mkdtemp(prefix="asyncor-merged-")
    try:
        yield export(weights, os.path.join(tmp, "model"), base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def command(args) -> int:
    try:
        out = export(args.path, args.out, args.base or "", args.dtype or "")
    except (ValueError, AdapterFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {args.path} -> {out} (a Hugging Face model directory: transformers and vLLM load it)")
    return 0
