"""`launch.py run --resume PATH`: continue a run from a checkpoint (written by learner/checkpoint.py; its
layout and meta.json: runtime/run_dir.py).

PATH is a run directory (its newest complete checkpoint is used) or one checkpoint directory
(`<run_dir>/checkpoints/step_NNNNNN`). The run continues in the same run directory with the config it was
launched with (`launch_config.json`, written by every new run), plus the `--set` overrides of every earlier
`--resume` of it (`checkpoint.resume_overrides` in its last config.json), plus any `--set` given now (e.g. a
larger `learner.steps` to extend a finished run). The policy preparation and the evaluation before RL are not
repeated; metrics written after the checkpoint are dropped from metrics.jsonl (that part of the run is done
again), and the interrupted attempt's logs move to `logs.<N>/`.

Keys the saved state depends on cannot change (`FROZEN`, ConfigError naming each key and why); keys it depends
on that can change are applied consistently by the part that restores the state: `learner.prompts_per_step`
and `algo.stages` (the buffer recomputes admission, buffer/state.py), `learner.lr` and
`learner.weight_decay` (the optimizer's param groups follow the config, learner/checkpoint.py),
`learner.ranks` (the optimizer state is resharded, the RNG states mapped, learner/checkpoint.py).
"""

from __future__ import annotations

import copy
import glob
import json
import os

from asyncor.configs.loader import ConfigError, apply_override, flatten, validate
from asyncor.configs.schema import Config
from asyncor.runtime.run_dir import META, CheckpointError, RunDir, read_meta

KEPT_ROLE_FILES = ("prepare.json", "eval_before.json")  # results of phases a resumed run does not repeat

# Keys (or sections) a resumed run cannot change, and why. Anything under a section counts, except the keys of
# UNFROZEN.
FROZEN = {
    "run.seed": "it sets the order the buffer's saved data cursor walks (and the built-in task's problems)",
    "run.name": "the run continues in its own directory (copy the directory to continue a copy under another name)",
    "run.output_dir": "the run continues in its own directory (copy the directory to continue a copy elsewhere)",
    "model.path": "the resumed policy is the checkpoint's, and model.path stays the run's starting policy (the "
                  "KL reference and the tokenizer)",
    "model.tiny": "the policy's shape is the checkpoint's",
    "task": "it defines the training set that the buffer's saved data cursor, given-back prompts and online "
            "filter refer to",
    "learner.lora.enabled": "the checkpoint holds either full weights or an adapter, and the optimizer state of "
                            "those parameters only",
    "learner.lora.rank": "the checkpoint's adapter and its optimizer state have this rank",
    "learner.lora.target_modules": "the checkpoint's adapter covers these layers",
    "checkpoint.resume_from": "--resume sets it",
    "checkpoint.resume_overrides": "--resume sets it",
}
UNFROZEN = ("task.heldout_files", "task.heldout_size")  # evaluation only: the training set stays as it was
FILE_TASK_FROZEN = {  # with task.kind = "files" only
    "actors.max_prompt_tokens": "with task.kind = \"files\" it decides which training prompts are kept (longer "
                                "ones are dropped), so it defines the training set",
}


def find_checkpoint(path: str) -> tuple[str, str]:
    """(run directory, checkpoint directory) for PATH; ConfigError says what is missing."""
    path = os.path.normpath(os.path.abspath(path))
    if os.path.exists(os.path.join(path, META)):
        return os.path.dirname(os.path.dirname(path)), path
    if not os.path.isdir(path):
        raise ConfigError(f"--resume {path}: no such run or checkpoint directory")
    found = RunDir(path).complete()
    if not found:
        raise ConfigError(f"--resume {path}: no complete checkpoint under {path}/checkpoints "
                          "(they are written every checkpoint.every_steps steps and at the end of a run)")
    return path, found[-1]


def resume_config(path: str, overrides: list[str] = ()) -> Config:
    """The config of the run at PATH, continued from its checkpoint, with the overrides of its earlier resumes
    and then `overrides` (KEY=VALUE) applied."""
    run_dir, ckpt = find_checkpoint(path)
    try:
        meta = read_meta(ckpt)
    except CheckpointError as exc:
        raise ConfigError(f"--resume: {exc}") from None
    try:
        with open(RunDir(run_dir).launch_config) as f:
            tree = json.load(f)
        with open(RunDir(run_dir).config) as f:
            resolved = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume {run_dir}: cannot read the run's config ({exc})") from None
    earlier = earlier_overrides(resolved, run_dir)
    saved = config_with(tree, earlier)  # what the checkpoint was written under
    config = config_with(tree, [*earlier, *overrides])
    check_frozen(saved, config)
    config.run.output_dir, config.run.name = os.path.split(run_dir)
    config.run.overwrite = True
    config.model.path = resolved["model"]["path"]  # the prepared starting policy: KL reference, tokenizer
    config.checkpoint.resume_from = ckpt
    config.checkpoint.resume_overrides = [*earlier, *overrides]
    if meta["version"] >= config.learner.steps:
        raise ConfigError(f"--resume: the checkpoint is at step {meta['version']} and learner.steps = "
                          f"{config.learner.steps}: nothing left to train (to train further, add --set "
                          f"learner.steps=N with N > {meta['version']})")
    return config


def earlier_overrides(resolved: dict, run_dir: str) -> list[str]:
    """The overrides of the earlier resumes of the run, from its last resolved config (config.json)."""
    found = resolved.get("checkpoint", {}).get("resume_overrides", [])
    if not isinstance(found, list) or not all(isinstance(a, str) for a in found):
        raise ConfigError(f"--resume {run_dir}: checkpoint.resume_overrides in config.json is not a list of "
                          f"KEY=VALUE strings (got {found!r})")
    return found


def config_with(tree: dict, overrides: list[str]) -> Config:
    """`tree` (launch_config.json's) with `overrides` applied, validated; `tree` is left as it was."""
    tree = copy.deepcopy(tree)
    for assignment in overrides:
        apply_override(tree, assignment)
    return validate(tree)


def check_frozen(saved: Config, resumed: Config) -> None:
    """ConfigError naming every key the resumed run changes that the checkpoint's state depends on."""
    before, after = flatten(saved.model_dump(mode="json")), flatten(resumed.model_dump(mode="json"))
    frozen = {**FROZEN, **(FILE_TASK_FROZEN if saved.task.kind == "files" else {})}
    refused = []
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) == after.get(key) or key in UNFROZEN:
            continue
        reason = next((why for k, why in frozen.items() if key == k or key.startswith(k + ".")), None)
        if reason:
            refused.append(f"  {key}: {before.get(key)!r} -> {after.get(key)!r} ({reason})")
    if refused:
        raise ConfigError("--resume cannot change these keys, which the checkpoint's state depends on (start a "
                          "new run to change them):\n" + "\n".join(refused))


def save_launch_config(config: Config, run_dir: str) -> None:
    with open(RunDir(run_dir).launch_config, "w") as f:
        json.dump(config.model_dump(mode="json"), f, indent=2)


def prepare_resumed_dir(config: Config) -> None:
    """Keep what the run did up to the checkpoint; set aside what came after it."""
    run_dir = RunDir(config.run_dir)
    written_at = read_meta(config.checkpoint.resume_from).get("written_at", float("inf"))
    keep_records_before(run_dir.metrics, written_at)
    for path in glob.glob(os.path.join(run_dir.roles, "*.json")):
        if os.path.basename(path) not in KEPT_ROLE_FILES:
            os.remove(path)
    if os.path.exists(run_dir.summary):
        os.remove(run_dir.summary)
    if config.telemetry.tensorboard:  # the events again, without the steps after the checkpoint
        from asyncor.launcher.tensorboard import export

        export(run_dir.path)
    logs = run_dir.logs
    if os.path.isdir(logs):
        n = 1
        while os.path.exists(f"{logs}.{n}"):
            n += 1
        os.rename(logs, f"{logs}.{n}")


def keep_records_before(path: str, ts: float) -> int:
    """Rewrite metrics.jsonl without the records written after `ts`; returns how many were dropped."""
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    kept = [line for line in lines if line.strip() and _ts(line) <= ts]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)
    return len(lines) - len(kept)


def _ts(line: str) -> float:
    try:
        return float(json.loads(line).get("ts", 0.0))
    except (ValueError, TypeError, AttributeError):
        return float("inf")  # a torn last line: dropped with what came after the checkpoint
