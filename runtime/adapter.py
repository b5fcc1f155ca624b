"""LoRA adapters on the actor's side of the weight sync: what an adapter message must hold, and the merge.

With `[learner.lora]` the learner broadcasts only the adapter tensors, in peft's names
(`base_model.model.<module>.lora_A.weight`, (r, in), and `...lora_B.weight`, (out, r); learner/lora.py).
An actor keeps the unmodified base weights it started from and, for every version, checks the adapter
against them and merges it: W' = W + (alpha / r) * B @ A for every targeted W, computed in float32 and
stored in the base's dtype. The merged state dict then loads into vLLM like full weights
(actors/engine.py `load_weights`), so nothing in the engine, the decoding loop, the per-token versions or
the prefix-cache salting changes, and decoding runs at the plain engine's speed (why merging and not vLLM's
own LoRA path: docs/lora.md, BENCHMARKS.md).

Every adapter message is untrusted: `Adapter.check` refuses one whose names are not exactly the expected
set, whose shapes or dtypes differ, or whose values are not finite (`AdapterRefused`, with the reason);
the caller counts it and never loads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

PREFIX = "base_model.model."  # peft's prefix of every adapter tensor name
NOT_TARGETS = ("lm_head", "embed_tokens")


class AdapterRefused(ValueError):
    """An adapter message that does not fit the base model; `reason` is a short counter key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def is_target(module: str, targets: list[str]) -> bool:
    """Whether the linear layer named `module` (e.g. `model.layers.0.self_attn.q_proj`) gets an adapter: its last
    name part is one of `targets`, or `targets` is ["all-linear"] (every linear layer but lm_head)."""
    last = module.rsplit(".", 1)[-1]
    if last in NOT_TARGETS:
        return False
    return targets == ["all-linear"] or last in targets


def adapter_names(module: str) -> tuple[str, str]:
    """peft's names of the A and B tensors of the adapter on `module`."""
    return f"{PREFIX}{module}.lora_A.weight", f"{PREFIX}{module}.lora_B.weight"


@dataclass
class Target:
    weight: str  # the base state dict's name of W, `<module>.weight`
    a: str  # peft name of A
    b: str  # peft name of B
    out_features: int
    in_features: int


class Adapter:
    """The expected adapter of one base model, and the merge into it."""

    def __init__(self, base: dict[str, torch.Tensor], rank: int, alpha: float, targets: list[str]):
        """`base`: the full base state dict (tensors on the device the merge runs on); 2-D `<module>.weight`
        tensors of targeted modules get adapters."""
        self.base = base
        self.rank = rank
        self.scaling = alpha / rank
        self.targets: list[Target] = []
        for name, t in base.items():
            if not name.endswith(".weight") or t.dim() != 2:
                continue
            module = name[: -len(".weight")]
            if is_target(module, targets):
                a, b = adapter_names(module)
                self.targets.append(Target(name, a, b, t.shape[0], t.shape[1]))
        if not self.targets:
            raise ValueError(f"learner.lora.target_modules = {targets}: no 2-D weight of the base model matches")
        self.shapes = {}
        for t in self.targets:
            self.shapes[t.a] = (rank, t.in_features)
            self.shapes[t.b] = (t.out_features, rank)

    @classmethod
    def from_model_dir(cls, path: str, rank: int, alpha: float, targets: list[str],
                       device: str | torch.device = "cpu") -> "Adapter":
        """The base weights of a Hugging Face model directory (safetensors)."""
        from safetensors.torch import load_file

        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.safetensors weights to keep as the adapter's base")
        base = {}
        for f in files:
            base.update(load_file(os.path.join(path, f), device=str(device)))
        return cls(base, rank, alpha, targets)

    def check(self, tensors: list[tuple[str, torch.Tensor]]) -> None:
        """Refuse (AdapterRefused) an adapter that is not exactly the expected tensors, finite."""
        names = [n for n, _ in tensors]
        got = set(names)
        if len(got) != len(names):
            raise AdapterRefused("duplicate_names", f"{len(names) - len(got)} names repeated")
        missing, unexpected = sorted(set(self.shapes) - got), sorted(got - set(self.shapes))
        if missing or unexpected:
            raise AdapterRefused("wrong_names", f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                                                f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        for name, t in tensors:
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise AdapterRefused("bad_dtype", f"{name} is {getattr(t, 'dtype', type(t))}, not floating point")
            if tuple(t.shape) != self.shapes[name]:
                raise AdapterRefused("wrong_shape", f"{name} has shape {tuple(t.shape)}, expected "
                                                    f"{self.shapes[name]}")
            if not bool(torch.isfinite(t).all()):
                raise AdapterRefused("not_finite", f"{name} holds NaN or infinite values")

    def merge(self, tensors: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
        """The full state dict with the (checked) adapter merged: W + scaling * B @ A in float32, in W's dtype.
        Tensors of untargeted weights are the base's own (not copied)."""
        self.check(tensors)
        adapter = dict(tensors)
        merged = dict(self.base)
        for t in self.targets:
            w = self.base[t.weight]
            a = adapter[t.a].to(device=w.device, dtype=torch.float32)
            b = adapter[t.b].to(device=w.device, dtype=torch.float32)
            merged[t.weight] = torch.addmm(w.float(), b, a, alpha=self.scaling).to(w.dtype)
        return list(merged.items())

    @property
    def numel(self) -> int:
        """Parameters of one adapter."""
        return sum(r * c for r, c in self.shapes.values())
