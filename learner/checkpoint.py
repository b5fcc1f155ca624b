"""Learner checkpoints: what a run needs to continue exactly where it stood.

One checkpoint is one directory, `<run_dir>/checkpoints/step_NNNNNN/` (its layout and `meta.json`:
runtime/run_dir.py):

  model/              Hugging Face model directory: the fp32 master weights (`save_pretrained`, safetensors)
                      plus the tokenizer files; transformers and vLLM load it as is
  optimizer/          AdamW state in torch.distributed.checkpoint format: each rank writes its own shard
                      when the learner is sharded (FSDP2), and a different number of ranks can load it
  rng/rank<R>.pt      torch's random-number state of each learner rank
  trainer_state.json  version (= steps trained), the entropy controller's state
  buffer_state.json   the buffer's data cursor, staleness budget and ledger at that version (the buffer's
                      `state_dict`; groups generated but not trained yet are given back as prompts)
  meta.json           step, version, ranks, time; written last

It is written into `.tmp-step_NNNNNN/` (meta.json last) and renamed into place once complete, so a
directory named `step_*` is always whole (a crash mid-write leaves only a `.tmp-*`, removed when that step
is written again); then all but the newest `checkpoint.keep` are deleted (never the one this run resumed
from). `launch.py run --resume` (launcher/resume.py) picks the
newest and sets `checkpoint.resume_from`; the learner, buffer and actors read their parts at start.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings

from asyncor.runtime.run_dir import BUFFER_STATE, META, MODEL, OPTIMIZER, RNG, TRAINER_STATE, RunDir, read_meta

MODEL_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
               "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


def read_json(path: str, name: str) -> dict:
    with open(os.path.join(path, name)) as f:
        return json.load(f)


def _write_json(path: str, doc: dict) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def copy_model_files(src: str, dst: str) -> None:
    """The tokenizer and generation files of `src` (the policy's source directory) that `dst` lacks."""
    for name in MODEL_FILES:
        if os.path.exists(os.path.join(src, name)) and not os.path.exists(os.path.join(dst, name)):
            shutil.copy(os.path.join(src, name), dst)


def save_model(lm, state: dict, out: str, dtype, source_dir: str) -> None:
    """`state` (full tensors) as a Hugging Face directory in `dtype` (a torch dtype; config.json says so), with
    the tokenizer."""
    saved = lm.config.dtype
    lm.config.dtype = dtype
    try:
        lm.save_pretrained(out, state_dict=state, safe_serialization=True)
    finally:
        lm.config.dtype = saved
    copy_model_files(source_dir, out)


def save(run_dir: str, step: int, version: int, policy, optimizer, ranks, full_state: dict | None,
         trainer_state: dict, buffer_state: dict | None, source_dir: str, keep: int,
         protect: str = "") -> str:
    """Write checkpoint `step` (every rank calls this; rank 0 writes the shared files). `full_state`: the
    gathered fp32 model state on rank 0 (None elsewhere). Returns the checkpoint's directory."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    final, tmp = RunDir(run_dir).step(step), RunDir(run_dir).partial_step(step)
    if ranks.main:
        shutil.rmtree(tmp, ignore_errors=True)  # a write that died half-way
        os.makedirs(os.path.join(tmp, RNG))
    ranks.barrier()
    optim_state = get_optimizer_state_dict(policy, optimizer)
    dcp.save({"optimizer": optim_state}, checkpoint_id=os.path.join(tmp, OPTIMIZER), no_dist=_single())
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, os.path.join(tmp, RNG, f"rank{ranks.rank}.pt"))
    if ranks.main:
        save_model(policy.lm, full_state, os.path.join(tmp, MODEL), torch.float32, source_dir)
        _write_json(os.path.join(tmp, TRAINER_STATE), trainer_state)
        _write_json(os.path.join(tmp, BUFFER_STATE), buffer_state or {})
    ranks.barrier()  # every rank's shard is on disk
    if ranks.main:
        _write_json(os.path.join(tmp, META), {"step": step, "version": version, "ranks": ranks.world,
                                                     "written_at": time.time()})
        if os.path.exists(final):  # the same step written again (a resumed run that ended where it began)
            shutil.rmtree(final)
        os.rename(tmp, final)
        prune(run_dir, keep, protect)
    ranks.barrier()
    return final


def _single() -> bool:
    """No process group (one unsharded rank): torch.distributed.checkpoint runs without collectives (and
    would warn that it assumes so on every call)."""
    import torch.distributed as dist

    warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
    return not dist.is_initialized()


def prune(run_dir: str, keep: int, protect: str = "") -> list[str]:
    """Delete all but the newest `keep` complete checkpoints (never `protect`, the one this run resumed
    from, while it may still be read); returns the deleted paths."""
    old = RunDir(run_dir).complete()[:-keep]
    gone = [p for p in old if os.path.abspath(p) != os.path.abspath(protect or "/nonexistent")]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def load(path: str, policy, optimizer, ranks) -> dict:
    """Restore the optimizer and this rank's random state from checkpoint `path` into the freshly loaded
    (and, when sharded, already wrapped) policy; returns trainer_state.json. The weights themselves come
    from `<path>/model` when the policy is loaded (Config.policy_path)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    meta = read_meta(path)
    optim_state = get_optimizer_state_dict(policy, optimizer)  # the target layout, AdamW's state allocated
    state = {"optimizer": optim_state}
    dcp.load(state, checkpoint_id=os.path.join(path, OPTIMIZER), no_dist=_single())
    set_optimizer_state_dict(policy, optimizer, state["optimizer"])
    rng_path = os.path.join(path, RNG, f"rank{ranks.rank}.pt")
    if meta["ranks"] == ranks.world and os.path.exists(rng_path):
        rng = torch.load(rng_path, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return read_json(path, TRAINER_STATE)
