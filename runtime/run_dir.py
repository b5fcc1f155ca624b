"""Where a run keeps what: the one module that names the files of a run directory and of a checkpoint.

    runs/<name>/                  RunDir(path)
      launch_config.json          .launch_config  the config as given to `launch.py run` (--resume continues it)
      config.json                 .config         the fully resolved config every role reads
      plan.json                   .plan           which role ran on which node and GPUs
      metrics.jsonl               .metrics        one metrics record per line (the launcher's collector writes it)
      logs/<role>.jsonl, .out     .log(role)      structured log; the process's raw output (.output(role))
      roles/<role>.json           .role(role)     each role's final figures
      checkpoints/step_NNNNNN/    .step(n)        learner checkpoints, below
      final/                      .final          the trained policy, a Hugging Face directory (LoRA: merged,
                                                  and the adapter in final/adapter/)
      tensorboard/<role>/         .tensorboard    event files
      trackers.json               .trackers       the W&B / MLflow run ids (launcher/tracker_thread.py)
      wandb/                      .wandb          W&B's files of the run (offline mode: the whole run)
      keys/                       .keys           the run's CURVE keys (directory 0700, secret keys 0600)
      submit/                     .submit         `launch.py submit`'s batch script and SLURM output
      summary.json                .summary        written last: a run with one has finished

    checkpoints/step_NNNNNN/      one checkpoint (learner/checkpoint.py writes it)
      model/  optimizer/  rng/rank<R>.pt  trainer_state.json  buffer_state.json
      adapter/                    in place of model/ with [learner.lora]: the adapter, peft's format
      meta.json                   {step, version, ranks, lora, written_at}: written last, just before the
                                  directory is renamed into place, so a `step_*` directory with it is complete

The learner writes checkpoints; the buffer and the actors read their parts of one when a run resumes, and
the launcher picks the newest (`complete`). The learner, the actors (`start_version`) and the launcher read
`meta.json` through `read_meta` here; the buffer reads only buffer_state.json. `read_meta` refuses a
checkpoint whose model/ holds pickle-format weights (.bin, .pt, ...): no part of a checkpoint is loaded in a
way that can run code from it (learner/checkpoint.py).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

STEP_DIR = re.compile(r"^step_(\d{6,})$")
MODEL, ADAPTER, OPTIMIZER, RNG = "model", "adapter", "optimizer", "rng"
TRAINER_STATE, BUFFER_STATE, META = "trainer_state.json", "buffer_state.json", "meta.json"
CHECKPOINT_PARTS = (OPTIMIZER, TRAINER_STATE, BUFFER_STATE)  # and the weights: MODEL, or ADAPTER with LoRA
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # loading these can run code: refused


@dataclass(frozen=True)
class RunDir:
    path: str

    def _at(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    launch_config = property(lambda self: self._at("launch_config.json"))
    config = property(lambda self: self._at("config.json"))
    plan = property(lambda self: self._at("plan.json"))
    metrics = property(lambda self: self._at("metrics.jsonl"))
    logs = property(lambda self: self._at("logs"))
    roles = property(lambda self: self._at("roles"))
    checkpoints = property(lambda self: self._at("checkpoints"))
    final = property(lambda self: self._at("final"))
    tensorboard = property(lambda self: self._at("tensorboard"))
    trackers = property(lambda self: self._at("trackers.json"))
    wandb = property(lambda self: self._at("wandb"))
    keys = property(lambda self: self._at("keys"))
    submit = property(lambda self: self._at("submit"))
    summary = property(lambda self: self._at("summary.json"))

    def log(self, role: str) -> str:
        return self._at("logs", f"{role}.jsonl")

    def output(self, role: str) -> str:
        return self._at("logs", f"{role}.out")

    def role(self, role: str) -> str:
        return self._at("roles", f"{role}.json")

    def step(self, step: int) -> str:
        return self._at("checkpoints", f"step_{step:06d}")

    def partial_step(self, step: int) -> str:
        """Where checkpoint `step` is written before it is renamed into place."""
        return self._at("checkpoints", f".tmp-step_{step:06d}")

    def complete(self) -> list[str]:
        """Complete checkpoints of this run, oldest first."""
        root = self.checkpoints
        if not os.path.isdir(root):
            return []
        found = [(int(m.group(1)), os.path.join(root, name)) for name in os.listdir(root)
                 if (m := STEP_DIR.match(name)) and os.path.exists(os.path.join(root, name, META))]
        return [p for _, p in sorted(found)]


class CheckpointError(RuntimeError):
    pass


def read_meta(checkpoint: str) -> dict:
    """The checkpoint's meta.json, checked (and its parts present); CheckpointError names what is wrong."""
    meta_path = os.path.join(checkpoint, META)
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint} is not a complete checkpoint (no {META})") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{meta_path} is unreadable: {exc}") from None
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), int) and meta[k] >= 0
                                             for k in ("step", "version", "ranks")):
        raise CheckpointError(f"{meta_path} lacks step / version / ranks")
    for part in CHECKPOINT_PARTS + ((ADAPTER,) if meta.get("lora") else (MODEL,)):
        if not os.path.exists(os.path.join(checkpoint, part)):
            raise CheckpointError(f"{checkpoint} lacks {part}")
    model = os.path.join(checkpoint, MODEL)
    pickled = sorted(n for n in os.listdir(model) if n.endswith(PICKLED_WEIGHTS)) if os.path.isdir(model) else []
    if pickled:
        raise CheckpointError(f"{checkpoint}/{MODEL} holds pickle-format files {pickled}: a checkpoint's weights are "
                              "safetensors (loading a pickle can run code); remove them or convert to safetensors")
    return meta


def start_version(resume_from: str) -> int:
    """The policy version a role starts at: the checkpoint's when the run resumes from one, else 0."""
    return read_meta(resume_from)["version"] if resume_from else 0
