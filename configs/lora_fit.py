"""Does a [learner.lora] config fit the model? Checked by `launch.py run` before any process starts.

The model's linear layers come from its architecture alone (config.json, or `model.tiny` for the built-in
model), instantiated on PyTorch's meta device: no weights are read, nothing is allocated. A target that names
no linear layer of the model, or a rank above the smaller side of a targeted layer, is a ValueError naming the
key and what would be accepted.
"""

from __future__ import annotations

import json
import os


def linear_shapes(architecture: dict) -> dict[str, list[tuple[str, int, int]]]:
    """{last name part: [(module name, out_features, in_features), ...]} of every linear layer but lm_head of the
    causal LM that `architecture` (config.json's fields, with model_type) describes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(architecture)
    model_config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    shapes: dict[str, list[tuple[str, int, int]]] = {}
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and last != "lm_head":
            shapes.setdefault(last, []).append((name, module.out_features, module.in_features))
    return shapes


def model_architecture(config) -> dict:
    """config.json of `model.path`, or the built-in tiny model's shape."""
    if not config.model.path:
        return {**config.model.tiny.architecture(), "vocab_size": 64}
    with open(os.path.join(config.model.path, "config.json")) as f:
        return json.load(f)


def check_lora_fit(lora, shapes: dict[str, list[tuple[str, int, int]]]) -> None:
    """ValueError when `lora` (LoraConfig) targets a layer the model lacks or has a rank above a layer's width."""
    if lora.target_modules == ["all-linear"]:
        targets = sorted(shapes)
    else:
        unknown = [t for t in lora.target_modules if t not in shapes]
        if unknown:
            raise ValueError(f"learner.lora.target_modules: {unknown} name no linear layer of this model; its linear "
                             f"layers (lm_head aside) are {sorted(shapes)}, or use [\"all-linear\"]")
        targets = lora.target_modules
    name, out_f, in_f = min((s for t in targets for s in shapes[t]), key=lambda s: min(s[1], s[2]))
    if lora.rank > min(out_f, in_f):
        raise ValueError(f"learner.lora.rank = {lora.rank} is above the width of {name} ({out_f} x {in_f}): an "
                         f"adapter's rank can be at most {min(out_f, in_f)} here (lower the rank or leave that layer "
                         f"out of learner.lora.target_modules)")
