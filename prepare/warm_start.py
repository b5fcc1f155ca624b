"""The policy RL starts from: a given model directory (`model.path`), or the tiny
model after a short supervised warm start on the built-in task (the way
Skywork-OR1 starts from a distilled model; the tiny model as built when
`warm_start.enabled` is false or `warm_start.steps` is 0); the tiny model and
its warm start are cached under `run.cache_dir`, each keyed by everything it
depends on.

`prepare_policy(config)` returns the model directory; a cached warm start is
reused instantly, a missing one is built (a minute or so on 2 CPU cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time

from asyncor.configs.schema import Config
from asyncor.prepare.tiny_model import build_tiny_model, tiny_model_key
from asyncor.telemetry import log as tlog
from asyncor.telemetry.progress import Progress


def warm_start_key(config: Config) -> str:
    # Only what the warm start trains on: the built-in task's split (never the RL data files).
    task = config.task.model_dump(include={"kind", "digits", "operations", "max_repeat", "train_size", "heldout_size"})
    warm = config.warm_start.model_dump(exclude={"tool_fraction"})
    if config.task.kind == "custom":  # a user task: its demonstrations themselves (its data may change)
        from asyncor.tasks.custom_task import warm_start_problems

        task["source"], task["options"] = config.task.source, config.task.options
        task["demonstrations"] = hashlib.sha256(json.dumps([(p.prompt, p.answer) for p in warm_start_problems(
            config.task)]).encode()).hexdigest()
    if config.task.kind == "calculator":  # the demonstrations' tool calls and tags
        warm["tool_fraction"] = config.warm_start.tool_fraction
        task["env"] = config.task.env.model_dump(include={"call_start", "call_end", "observation_start",
                                                          "observation_end"})
    blob = json.dumps({"model": tiny_model_key(config), "task": task,
                       "warm_start": warm, "seed": config.run.seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def example(codec, problem, config: Config, rng: random.Random):
    """(token ids, which are trained) of one warm-start example: the prompt (not trained) and the answer ending
    with eos; for the calculator task, `warm_start.tool_fraction` of them call the tool first, its observation
    being context (not trained), as in an RL episode."""
    import numpy as np

    prompt = codec.encode_prompt(problem.prompt)
    if config.task.kind != "calculator":
        segments = [(codec.encode_response(problem.answer), True)]
    else:
        from asyncor.tasks.calculator import demonstration

        parts = demonstration(problem, config.task.env, rng.random() < config.warm_start.tool_fraction)
        segments = [(codec.encode_text(text), trained) for text, trained in parts[:-1]]
        segments.append((codec.encode_response(parts[-1][0]), True))
    ids = np.concatenate([prompt] + [s for s, _ in segments])
    trained = np.concatenate([np.zeros(len(prompt), bool)] + [np.full(len(s), t) for s, t in segments])
    return ids, trained


def supervised_train(model_dir: str, config: Config, out_dir: str) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from asyncor.tasks.builtin import make_splits
    from asyncor.tasks.codec import TextCodec

    log = tlog.get("prepare")
    ws = config.warm_start
    torch.manual_seed(config.run.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    codec = TextCodec(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=ws.lr, weight_decay=0.0)
    train, _ = make_splits(config.task, config.run.seed)
    rng = random.Random(config.run.seed)
    pad = model.config.pad_token_id
    start = time.perf_counter()
    losses = []
    # `progress` lines every 5 s for the launcher's console (launcher/run.py run_phase reads them from our log).
    progress = Progress("warm start", ws.steps, log=log, unit="steps")
    for step in range(ws.steps):
        rows = [example(codec, p, config, rng) for p in rng.sample(train, min(ws.batch_size, len(train)))]
        T = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), T), pad, dtype=torch.long)
        labels = torch.full((len(rows), T), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for b, (ids, trained) in enumerate(rows):
            input_ids[b, :len(ids)] = torch.from_numpy(ids.astype(np.int64))
            labels[b, :len(ids)] = torch.where(torch.from_numpy(trained), input_ids[b, :len(ids)], -100)
            mask[b, :len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        # Cosine decay to 0: a warm start that ends mid-way but settled.
        for group in optimizer.param_groups:
            group["lr"] = ws.lr * 0.5 * (1 + np.cos(np.pi * (step + 1) / ws.steps))
        losses.append(loss.item())
        progress.update(1, loss=round(float(np.mean(losses[-50:])), 4))
        if (step + 1) % 50 == 0 or step + 1 == ws.steps:
            log.info("warm_start_progress", step=step + 1, of=ws.steps, loss=round(float(np.mean(losses[-50:])), 4),
                     eta_s=None if progress.eta_s() is None else round(progress.eta_s(), 1))
        if step + 1 == ws.steps:
            progress.close()
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp)
    model.to(getattr(torch, config.model.dtype)).save_pretrained(tmp, safe_serialization=True)
    info = {"steps": ws.steps, "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "seconds": time.perf_counter() - start}
    with open(os.path.join(tmp, "warm_start.json"), "w") as f:
        json.dump(info, f)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return info


def prepare_policy(config: Config) -> str:
    """The directory of policy version 0 (building and caching it if needed)."""
    if config.model.path:
        return config.model.path
    log = tlog.get("prepare")
    cache = os.path.abspath(config.run.cache_dir)
    os.makedirs(cache, exist_ok=True)
    base = os.path.join(cache, f"tiny-{tiny_model_key(config)}")
    if not os.path.exists(os.path.join(base, "config.json")):
        shutil.rmtree(base, ignore_errors=True)
        build_tiny_model(config, base)
        log.info("tiny_model_built", path=base)
    if not config.warm_start.enabled or config.warm_start.steps == 0:
        return base
    out = os.path.join(cache, f"warmstart-{warm_start_key(config)}")
    if os.path.exists(os.path.join(out, "warm_start.json")):
        log.info("warm_start_cached", path=out)
        return out
    info = supervised_train(base, config, out)
    log.info("warm_start_done", path=out, **info)
    return out



def main(config: Config) -> None:
    """The preparation phase (launcher/run.py): the policy's directory goes to the launcher as
    roles/prepare.json."""
    from asyncor.runtime.role_summary import write_role_summary

    write_role_summary(config, "prepare", {"model_dir": prepare_policy(config)})
