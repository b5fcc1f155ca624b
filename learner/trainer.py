"""The learner role: batch -> loss -> step -> publish version v+1 -> broadcast.

Talks to the buffer (DEALER, request/reply with deadlines) and to every actor
through the weight broadcast group (learner/weight_sync.py). It never waits
for one particular actor: batches come from the buffer whoever produced them,
and a broadcast waits only for the transfer (each actor's receiver thread is
always ready). Waiting for a batch is measured (`learner/wait_for_batch_s`);
past `learner.batch_wait_s` without data the learner fails with an error.

At the end it saves the policy to `runs/<name>/final/`, tells the buffer
`done`, and writes its figures to `roles/learner.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np
import torch
import zmq

from buffer.protocol import parse_group
from buffer.transport import Client, endpoint
from configs.loader import load_resolved
from configs.schema import Config
from configs.stages import stage_at
from kernels.logprob_entropy import logprob_entropy, resolve_impl
from learner.batch import PackedBatch
from learner.entropy_control import make_entropy_control
from learner.model import load_policy
from learner.update import UpdateSettings, train_step
from learner.weight_sync import WeightBroadcaster, pick_backend
from telemetry import log as tlog
from telemetry.metrics import MetricsWriter


def policy_logprobs(model, batch: PackedBatch, temperature: float, impl: str, chunk: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob and full-vocabulary entropy of every response token under the current weights."""
    device = next(model.parameters()).device
    hidden_BTH = model.model(input_ids=batch.input_ids_BT.to(device),
                             attention_mask=batch.attention_mask_BT.to(device)).last_hidden_state
    hidden_NH = hidden_BTH[batch.row_N.to(device), batch.col_N.to(device)]
    return logprob_entropy(hidden_NH, model.lm_head.weight, batch.target_N.to(device), temperature,
                           impl=impl, chunk=chunk)


def groups_metrics(report: dict) -> dict:
    """Rejection-sampling counts and the accuracy histogram of the groups that arrived since the last batch."""
    if not report:
        return {}
    arrived = max(report.get("arrived", 0), 1)
    return {
        "reward/solve_all_frac": report.get("solve_all", 0) / arrived,
        "reward/solve_none_frac": report.get("solve_none", 0) / arrived,
        "reward/accuracy_hist": report.get("accuracy_hist", []),
    }


class Learner:
    def __init__(self, config: Config):
        self.config = config
        self.log = tlog.get("learner")
        self.metrics = MetricsWriter(config.run_dir, "learner")
        torch.manual_seed(config.run.seed)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(config.learner.threads)
        self.model = load_policy(config.model, self.device)
        self.model.train()
        try:
            self.logprob_impl = resolve_impl(config.learner.logprob_impl, self.device)
        except ValueError as err:
            raise ValueError(f"learner.logprob_impl: {err}") from None
        self.log.info("logprob_impl", configured=config.learner.logprob_impl, using=self.logprob_impl,
                      device=self.device.type)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learner.lr,
                                           weight_decay=config.learner.weight_decay)
        net = config.net
        ctx = zmq.Context.instance()
        self.buffer = Client(ctx, endpoint(net.host, net.buffer_learner_port), "learner",
                             config.buffer.max_message_bytes, "buffer")
        self.broadcaster = WeightBroadcaster(ctx, net.host, net.sync_port, net.store_port, config.actors.count,
                                             pick_backend(config.sync.backend, self.device), config.sync.timeout_s,
                                             self.device)
        self.version = 0
        pad_id = self.model.config.pad_token_id if self.model.config.pad_token_id is not None else 0
        self.controller = make_entropy_control(config.algo.entropy)
        # A frozen copy of the initial policy, only when a KL penalty asks for one.
        self.reference = None
        if config.algo.kl_coef > 0:
            self.reference = load_policy(config.model, self.device).eval().requires_grad_(False)
        self.settings = UpdateSettings(
            algo=config.algo, eps_low=config.learner.clip_eps_low, eps_high=config.learner.clip_eps_high,
            grad_clip=config.learner.grad_clip, pad_id=pad_id,
            logprob_fn=lambda model, batch: policy_logprobs(model, batch, config.actors.temperature,
                                                            self.logprob_impl, config.learner.logprob_chunk))

    def next_batch(self):
        cfg = self.config
        deadline = time.monotonic() + cfg.learner.batch_wait_s
        while True:
            n_groups = stage_at(cfg, self.version).prompts_per_step  # D_R of the current stage
            reply = self.buffer.request("batch_request", {"version": self.version, "n_groups": n_groups},
                                        cfg.net.request_timeout_s)
            if reply.type == "batch":
                return ([parse_group(g) for g in reply.body["groups"]], reply.body["staleness"],
                        reply.body.get("groups_report", {}))
            if time.monotonic() > deadline:
                raise TimeoutError(f"no batch from the buffer within learner.batch_wait_s={cfg.learner.batch_wait_s}s "
                                   f"(buffer holds {reply.body.get('size')} groups)")

    def step(self, groups) -> dict:
        return train_step(self.model, self.optimizer, groups, self.settings, self.controller, self.reference)

    def run(self) -> dict:
        cfg = self.config
        timeout = cfg.net.request_timeout_s
        self.buffer.request("hello", {}, timeout)
        self.buffer.request("version", {"version": 0}, timeout)
        totals = {"wait_s": 0.0, "train_s": 0.0, "tokens": 0, "broadcast_s": [], "staleness": []}
        started = time.perf_counter()
        for step in range(cfg.learner.steps):
            t0 = time.perf_counter()
            groups, staleness, report = self.next_batch()
            t1 = time.perf_counter()
            values = self.step(groups)
            t2 = time.perf_counter()
            self.version += 1
            if self.version % cfg.sync.every == 0 or step == cfg.learner.steps - 1:
                broadcast_s = self.broadcaster.broadcast(self.version, list(self.model.state_dict().items()))
                totals["broadcast_s"].append(broadcast_s)
                values["sync/broadcast_s"] = broadcast_s
            # The buffer learns the version only after the weights went out, so a grant for
            # version v never asks an actor for weights that are not on their way.
            self.buffer.request("version", {"version": self.version}, timeout)
            totals["wait_s"] += t1 - t0
            totals["train_s"] += t2 - t1
            totals["tokens"] += values["learner/tokens"]
            totals["staleness"].extend(staleness)
            elapsed = time.perf_counter() - started
            values.update({
                "learner/step": step + 1,
                "learner/version": self.version,
                "learner/wait_for_batch_s": t1 - t0,
                "learner/step_s": t2 - t1,
                "learner/tokens_per_s": values["learner/tokens"] / (t2 - t1),
                "learner/wait_for_batch_frac": totals["wait_s"] / elapsed,
                "learner/staleness_mean": float(np.mean(staleness)),
                "learner/staleness_max": int(max(staleness)),
                "learner/staleness_hist": np.bincount(staleness, minlength=cfg.buffer.max_staleness + 1).tolist(),
                "learner/stage": stage_at(cfg, step).index,
                **groups_metrics(report),
            })
            self.metrics.log(values, step=self.version)
            self.log.info("step", step=step + 1, reward=round(values["reward/mean"], 3),
                          loss=round(values["learner/loss"], 4), staleness_max=int(max(staleness)),
                          wait_s=round(t1 - t0, 3))
        wall = time.perf_counter() - started
        self.save_final()
        summary = {
            "steps": cfg.learner.steps,
            "tokens_per_s": totals["tokens"] / totals["train_s"] if totals["train_s"] else 0.0,
            "wait_for_batch_frac": totals["wait_s"] / wall if wall else 0.0,
            "broadcast_s_mean": float(np.mean(totals["broadcast_s"])) if totals["broadcast_s"] else 0.0,
            "staleness_trained": totals["staleness"],
            "wall_s": wall,
        }
        # Written before `done`: once the buffer hears it, the others may exit at any moment.
        os.makedirs(os.path.join(cfg.run_dir, "roles"), exist_ok=True)
        with open(os.path.join(cfg.run_dir, "roles", "learner.json"), "w") as f:
            json.dump(summary, f, indent=2)
        self.buffer.request("done", {}, timeout)
        self.broadcaster.close()
        return summary

    def save_final(self) -> None:
        out = os.path.join(self.config.run_dir, "final")
        self.model.save_pretrained(out, safe_serialization=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
            src = os.path.join(self.config.model.path, name)
            if os.path.exists(src) and not os.path.exists(os.path.join(out, name)):
                shutil.copy(src, out)
        # What a resumed run needs besides weights and optimiser: the version and the entropy controller.
        with open(os.path.join(out, "learner_state.json"), "w") as f:
            json.dump({"version": self.version, "entropy_control": self.controller.state_dict()}, f, indent=2)


def main(config: Config) -> None:
    summary = Learner(config).run()
    tlog.get("learner").info("exit", steps=summary["steps"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="asyncor learner role")
    parser.add_argument("--config", required=True, help="resolved config.json written by launch.py")
    args = parser.parse_args()
    cfg = load_resolved(args.config)
    tlog.setup("learner", cfg.run_dir)
    main(cfg)
