"""Learner checkpoints: what a run needs to continue exactly where it stood.

One checkpoint is one directory, `<run_dir>/checkpoints/step_NNNNNN/` (its layout and `meta.json`:
runtime/run_dir.py):

  model/              Hugging Face model directory: the fp32 master weights (`save_pretrained`, safetensors)
                      plus the tokenizer files; transformers and vLLM load it as is
  adapter/            in place of model/ with [learner.lora]: the fp32 adapter in peft's format
                      (runtime/adapter_files.py; the base is model.path, unchanged); `launch.py export`
                      merges it into a Hugging Face model
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
from). Durable across a node crash, not only a process crash: every file is fsynced by the rank that wrote
it (torch.distributed.checkpoint syncs its shards and metadata itself), rank 0 then fsyncs every file and
directory of the checkpoint, writes meta.json (fsynced), fsyncs the directory, renames it into place and
fsyncs `checkpoints/`, so the rename that marks it complete never reaches the disk before its contents.
`launch.py run --resume` (launcher/resume.py) picks the newest and sets `checkpoint.resume_from`; the
learner, buffer and actors read their parts at start.

Loading runs no code from the checkpoint: torch.distributed.checkpoint's own reader unpickles the optimizer's
`.metadata` with plain pickle and its non-tensor entries with `torch.load(weights_only=False)`; here the
metadata goes through an unpickler that knows only the classes such metadata holds (`read_optimizer_metadata`,
CheckpointError for anything else) and non-tensor entries through `torch.load(weights_only=True)`; the RNG
files load with `weights_only=True`, the weights are safetensors (runtime/run_dir.py `read_meta` refuses
pickle-format weights).

What a resumed run takes from the config rather than the checkpoint: the optimizer's hyper-parameters
(`learner.lr`, `learner.weight_decay`, AdamW's defaults for the rest: the param groups are set from the
freshly built optimizer after its state is loaded, and the change is logged); and when `learner.ranks`
changed, rank R restores the RNG state of rank R mod (the checkpoint's ranks) (every rank of a run starts
from the same seed, so this is the state a rank of the saved run had; logged).
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import shutil
import time
import warnings

from asyncor.runtime.adapter_files import copy_model_files, write_adapter
from asyncor.runtime.run_dir import (ADAPTER, BUFFER_STATE, META, MODEL, OPTIMIZER, RNG, TRAINER_STATE, CheckpointError,
                                     RunDir, read_meta)
from asyncor.telemetry import log as tlog


def read_json(path: str, name: str) -> dict:
    with open(os.path.join(path, name)) as f:
        return json.load(f)


def _write_json(path: str, doc: dict) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def fsync_path(path: str) -> None:
    """Flush one file's or directory's data and metadata (a directory's entries: names created, renamed) to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    """Every file under `root`, then every directory bottom-up, `root` last."""
    for dirpath, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)


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
         protect: str = "", adapter=None) -> str:
    """Write checkpoint `step` (every rank calls this; rank 0 writes the shared files). `full_state`: the
    gathered fp32 model state on rank 0 (None elsewhere); with `adapter` (runtime/adapter_files.py
    AdapterSettings: LoRA) it is the adapter, written in peft's format. Returns the checkpoint's directory."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    final, tmp = RunDir(run_dir).step(step), RunDir(run_dir).partial_step(step)
    if ranks.main:
        shutil.rmtree(tmp, ignore_errors=True)  # a write that died half-way
        os.makedirs(os.path.join(tmp, RNG))
    ranks.barrier()
    optim_state = get_optimizer_state_dict(policy, optimizer)
    # sync_files (the default): each rank fsyncs its shard, the coordinator the metadata.
    dcp.save({"optimizer": optim_state}, checkpoint_id=os.path.join(tmp, OPTIMIZER), no_dist=_single())
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    rng_path = os.path.join(tmp, RNG, f"rank{ranks.rank}.pt")
    torch.save(rng, rng_path)
    fsync_path(rng_path)  # by the rank that wrote it (another node's page cache is not rank 0's to flush)
    if ranks.main:
        if adapter is not None:
            write_adapter(os.path.join(tmp, ADAPTER), full_state, adapter)
        else:
            save_model(policy.lm, full_state, os.path.join(tmp, MODEL), torch.float32, source_dir)
        _write_json(os.path.join(tmp, TRAINER_STATE), trainer_state)
        _write_json(os.path.join(tmp, BUFFER_STATE), buffer_state or {})
    ranks.barrier()  # every rank's shard is on disk
    if ranks.main:
        fsync_tree(tmp)  # the weights, the tokenizer files, and every directory's entries
        _write_json(os.path.join(tmp, META), {"step": step, "version": version, "ranks": ranks.world,
                                                     "lora": adapter is not None, "written_at": time.time()})
        fsync_path(tmp)  # meta.json's entry, before the rename can reach the disk
        if os.path.exists(final):  # the same step written again (a resumed run that ended where it began)
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_path(os.path.dirname(final))  # the rename itself
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


def load(path: str, policy, optimizer, ranks, log=None) -> dict:
    """Restore the optimizer and this rank's random state from checkpoint `path` into the freshly loaded
    (and, when sharded, already wrapped) policy; returns trainer_state.json. The weights themselves come
    from `<path>/model` when the policy is loaded (Config.policy_path). The optimizer's hyper-parameters stay
    those it was built with (the config's); CheckpointError when a part is refused."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    log = tlog.get("learner") if log is None else log
    meta = read_meta(path)
    wanted = hyperparameters(optimizer)  # as built from the config, before the checkpoint's replace them
    optim_state = get_optimizer_state_dict(policy, optimizer)  # the target layout, AdamW's state allocated
    state = {"optimizer": optim_state}
    optim_dir = os.path.join(path, OPTIMIZER)
    read_optimizer_metadata(optim_dir)  # refused here, with the reason, rather than inside torch's loader
    reader, planner = _safe_loaders()
    try:
        dcp.load(state, storage_reader=reader(optim_dir), planner=planner(), no_dist=_single())
    except CheckpointException as exc:  # every rank's failures, gathered by torch.distributed.checkpoint
        raise CheckpointError(f"{optim_dir}: the optimizer state cannot be loaded: {exc}") from None
    set_optimizer_state_dict(policy, optimizer, state["optimizer"])
    changed = set_hyperparameters(optimizer, wanted)
    group = optimizer.param_groups[0]
    log.info("optimizer_restored", lr=group["lr"], weight_decay=group["weight_decay"], betas=list(group["betas"]),
             eps=group["eps"], changed_from_checkpoint=changed)
    restore_rng(path, meta["ranks"], ranks, log)
    return read_json(path, TRAINER_STATE)


def hyperparameters(optimizer) -> list[dict]:
    """Each param group's settings (lr, weight_decay, betas, eps, ...), without its parameters."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def set_hyperparameters(optimizer, wanted: list[dict]) -> dict:
    """Put `wanted` (from `hyperparameters`) back into the param groups; returns {key: [was, now]} of what
    changed (the checkpoint's values that the config overrides)."""
    changed = {}
    for group, settings in zip(optimizer.param_groups, wanted, strict=True):
        for key, value in settings.items():
            if group.get(key) != value:
                changed[key] = [_plain(group.get(key)), _plain(value)]
            group[key] = value
    return changed


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def restore_rng(path: str, saved_ranks: int, ranks, log) -> None:
    """This rank's random state: that of rank `rank mod saved_ranks` of the checkpoint (its own when the number
    of ranks is unchanged)."""
    import torch

    source = ranks.rank % saved_ranks
    rng_path = os.path.join(path, RNG, f"rank{source}.pt")
    if not os.path.exists(rng_path):
        log.warning("rng_not_restored", missing=rng_path)
        return
    try:
        rng = torch.load(rng_path, weights_only=True)  # tensors and plain data only: never runs code from the file
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    except (pickle.UnpicklingError, KeyError, TypeError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{rng_path} does not hold a torch RNG state: {exc!r}") from None
    if saved_ranks != ranks.world:
        log.info("rng_restored", rank=ranks.rank, from_rank=source, checkpoint_ranks=saved_ranks, ranks=ranks.world)


# ---------------------------------------------------------------------------------------------- safe loading

def _metadata_globals() -> dict[tuple[str, str], object]:
    """What the `.metadata` of an optimizer checkpoint may name: torch.distributed.checkpoint's metadata
    dataclasses, tensor shapes, dtypes and layouts, and the checkpoint's path."""
    import pathlib

    import torch
    import torch.distributed.checkpoint.metadata as md
    import torch.serialization
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    allowed = {("torch.distributed.checkpoint.metadata", name): getattr(md, name)
               for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                            "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")}
    allowed[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = _StorageInfo
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout  # a name -> torch.strided
    allowed[("pathlib", "PosixPath")] = pathlib.PosixPath
    allowed[("pathlib", "PurePosixPath")] = pathlib.PurePosixPath
    allowed.update({("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)})
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    """pickle, but every global it would import must be one of `_metadata_globals`: a checkpoint from elsewhere
    cannot make loading it import and call anything else (os.system, eval, ...)."""

    def __init__(self, file, allowed: dict):
        super().__init__(file)
        self.allowed = allowed

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of checkpoint metadata") from None


def read_optimizer_metadata(optim_dir: str):
    """The optimizer checkpoint's metadata, unpickled with only the classes it may hold; CheckpointError names the
    file and what was refused."""
    from torch.distributed.checkpoint.metadata import Metadata

    path = os.path.join(optim_dir, ".metadata")
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f, _metadata_globals()).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError) as exc:
        raise CheckpointError(f"{path} refused: {exc} (a checkpoint's optimizer metadata names only "
                              "torch.distributed.checkpoint's metadata classes; loading anything else could run "
                              "code)") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path} refused: it holds a {type(metadata).__name__}, not checkpoint metadata")
    return metadata


@functools.cache
def _safe_loaders() -> tuple[type, type]:
    """(reader, planner): torch.distributed.checkpoint's, loading nothing through plain pickle (defined on first
    use, as this module imports torch only when it loads or saves)."""
    import torch
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        """torch.distributed.checkpoint's file reader with the metadata read by `read_optimizer_metadata`."""

        def read_metadata(self):  # no **kwargs: torch then never falls back to a rank-local metadata file
            metadata = read_optimizer_metadata(str(self.path))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class SafeLoadPlanner(DefaultLoadPlanner):
        """Non-tensor entries (the param groups' settings) with `torch.load(weights_only=True)`."""

        def load_bytes(self, read_item, value) -> None:
            loaded = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                from torch.distributed.checkpoint._traverse import set_element

                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafeReader, SafeLoadPlanner
