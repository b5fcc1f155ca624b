"""The learner role: batch -> loss -> step -> broadcast the weights as version v+1 -> tell the buffer `version`.

`learner.ranks` processes run this module (learner/parallel.py). Rank 0 talks
to the buffer (wire/rpc.py request/reply: `learner_hello`, `version`,
`batch_request`, `checkpoint`, `done`) and to every actor through the weight
broadcast group (learner/weight_sync.py, sync/), and hands each step's groups
to the other ranks; all ranks train on their share of every mini-batch and
take part in gathering the weights for a broadcast. It never waits for one
particular actor: batches come from the buffer whoever produced them, and a
broadcast waits only for the transfer (each actor's receiver thread is always
ready). Broadcasts happen every `sync.every` steps and after the last one; the
buffer hears the new version only after them.

Producer: new policy versions (weights to the actors, `version` to the buffer).
Consumer: the buffer's batches. Blocking: at start, until every actor's weight
receiver said hello (`sync.timeout_s`, else TimeoutError); each request to the
buffer waits at most `net.request_timeout_s` for its reply (else TimeoutError:
fatal); a batch request is long-polled by the buffer and asked again after each
`wait`, and past `learner.batch_wait_s` in all without data the learner fails
with an error (the wait is measured: `learner/wait_for_batch_s`); a broadcast
waits at most `sync.timeout_s` per step of the sync (sync/broadcaster.py).
Dropped: nothing of the data; a failed sync is counted, the group rebuilt and
the current weights sent again while rank 0 waits for its next batch (`resync`);
`sync.max_failures` failures in a row are fatal. The other ranks wait in
collectives bounded by the process group's timeout (`init_ranks`).

Every `checkpoint.every_steps` steps and after the last one it writes a
checkpoint (learner/checkpoint.py; layout runtime/run_dir.py: fp32 weights,
optimiser, RNG, entropy controller, version, and the buffer's state, asked for
with a `checkpoint` message and answered `buffer_state`); with
`checkpoint.resume_from` set it starts from one. At the end it saves the policy
(model.dtype) to `runs/<name>/final/`, sends its figures to the launcher
(`roles/learner.json`), then tells the buffer `done`.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from asyncor.wire.curve import role_keys
from asyncor.wire import messages as wire
from asyncor.wire.envelope import decode, encode
from asyncor.wire.trajectory import parse_batch
from asyncor.wire.rpc import connect
from asyncor.wire.transport import endpoint
from asyncor.wire.zeromq import ZmqTransport
from asyncor.configs.schema import Config
from asyncor.configs.stages import stage_at, stages
from asyncor.kernels.logprob_entropy import resolve_impl
from asyncor.runtime.cores import learner_cores, pin
from asyncor.learner import checkpoint
from asyncor.learner.entropy_control import make_entropy_control
from asyncor.learner.lora import adapter_named, apply_lora, load_adapter_weights
from asyncor.learner.lora import settings as lora_settings
from asyncor.learner.model import Policy, load_causal_lm
from asyncor.learner.packing import layout_for
from asyncor.learner.parallel import Ranks, full_tensor, init_ranks, parallelize
from asyncor.learner.update import UpdateSettings, train_step
from asyncor.learner.weight_sync import publish
from asyncor.sync.broadcaster import WeightBroadcaster
from asyncor.sync.group import pick_backend
from asyncor.telemetry import log as tlog
from asyncor.runtime.role_summary import write_role_summary
from asyncor.telemetry.metrics import MetricsWriter
from asyncor.telemetry.time_budget import TimeBudget
from asyncor.telemetry.timeline import Timeline
from asyncor.runtime.adapter_files import read_adapter, write_adapter, write_merged
from asyncor.runtime.run_dir import RunDir


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
        self.batches_refused = 0  # batch replies that did not parse (next_batch asks again)
        torch.manual_seed(config.run.seed)
        lc = config.learner
        self.ranks: Ranks = init_ranks(config.model.dtype, lc.batch_wait_s + 2 * config.sync.timeout_s + 60)
        self.device = self.ranks.device
        if self.device.type == "cpu":
            torch.set_num_threads(lc.threads)
            spare = learner_cores(config.actors.count, config.actors.threads)
            if len(spare) >= self.ranks.world:  # each rank gets cores no actor uses (else the kernel places them)
                pin(spare[self.ranks.rank::self.ranks.world])
        self.dtype = getattr(torch, config.model.dtype)  # compute, broadcast and save dtype
        try:
            self.logprob_impl = resolve_impl(lc.logprob_impl, self.device)
        except ValueError as err:
            raise ValueError(f"learner.logprob_impl: {err}") from None
        self.policy = self.load_policy(config.policy_path).train()
        lm_config = self.policy.lm.config
        layout = layout_for(lc.packing, lm_config._attn_implementation)
        self.log.info("learner", rank=self.ranks.rank, ranks=self.ranks.world, sharded=self.ranks.sharded,
                      device=str(self.device), logprob_impl=self.logprob_impl, layout=layout,
                      micro_batch_tokens=lc.micro_batch_tokens, master_dtype=lc.master_dtype,
                      compute_dtype=config.model.dtype)
        # With LoRA only the adapters require gradients: the optimiser (and its state) holds nothing else.
        trainable = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=lc.lr, weight_decay=lc.weight_decay)
        if lc.lora.enabled:
            self.log.info("lora", rank=lc.lora.rank, alpha=lc.lora.alpha, targets=lc.lora.target_modules,
                          trainable=sum(p.numel() for p in trainable),
                          total=sum(p.numel() for p in self.policy.parameters()))
        self.metrics = (MetricsWriter(RunDir(config.run_dir).metrics, "learner", config.net.telemetry_address)
                        if self.ranks.main else None)
        net = config.net
        self.buffer = self.broadcaster = None
        if self.ranks.main:
            transport = ZmqTransport()
            keys = role_keys(net.auth)
            self.buffer = connect(transport, endpoint(net.buffer_address, net.buffer_learner_port), "learner",
                                  config.buffer.max_message_bytes, "buffer", keys)
            self.broadcaster = WeightBroadcaster(transport, net.learner_address, net.sync_port, net.store_port,
                                                 config.actors.count, pick_backend(config.sync.backend, self.device),
                                                 config.sync.timeout_s, self.device,
                                                 bind=net.bind_address(net.learner_address), keys=keys,
                                                 max_failures=config.sync.max_failures)
        self.version = 0
        self.sent_bytes = 0  # bytes of one version's broadcast (the adapter alone with LoRA)
        self.controller = make_entropy_control(config.algo.entropy)
        self.resumed_from = config.checkpoint.resume_from
        if self.resumed_from:  # weights came from <checkpoint>/model; the rest from the checkpoint's files
            if config.resume_adapter:  # the base came from model.path; the adapter is the checkpoint's
                load_adapter_weights(self.policy.lm, read_adapter(config.resume_adapter)[1])
            state = checkpoint.load(self.resumed_from, self.policy, self.optimizer, self.ranks)
            self.version = int(state["version"])
            self.controller.load_state_dict(state["entropy_control"])
            self.log.info("resumed", checkpoint=self.resumed_from, version=self.version)
        self.start_version = self.version
        # A frozen copy of the initial policy (model.path), only when a KL penalty asks for one.
        self.reference = None
        if config.algo.kl_coef > 0:
            self.reference = self.load_policy(config.model.path, lora=False).eval().requires_grad_(False)
        self.settings = UpdateSettings(
            algo=config.algo, eps_low=lc.clip_eps_low, eps_high=lc.clip_eps_high, grad_clip=lc.grad_clip,
            pad_id=lm_config.pad_token_id if lm_config.pad_token_id is not None else 0,
            micro_batch_tokens=lc.micro_batch_tokens, layout=layout,
            loss_agg_tokens=config.algo.loss_agg_tokens or max(stage.max_response_tokens for stage in stages(config)))

    def load_policy(self, path: str, lora: bool = True) -> Policy:
        """The policy at `path`, with [learner.lora]'s adapters when enabled (and `lora`), sharded."""
        cfg = self.config
        lm = load_causal_lm(cfg.model, self.device, torch.float32, path)  # fp32 masters (learner.master_dtype)
        if lora and cfg.learner.lora.enabled:
            lm = apply_lora(lm, cfg.learner.lora)
        policy = Policy(lm, cfg.actors.temperature, self.logprob_impl, cfg.learner.logprob_chunk)
        return parallelize(policy, self.ranks, self.dtype, cfg.learner.activation_checkpointing,
                           cfg.learner.offload_optimizer)

    def next_batch(self):
        """Rank 0 asks the buffer; every rank gets the same groups (the reply's bytes, parsed and checked).

        While it waits, rank 0 also watches the weight sync: when an actor (re)joined or the last sync failed,
        every rank publishes the current version again (a `resync` in place of a batch), so a restarted actor
        never waits a whole step for the weights it needs."""
        cfg = self.config
        deadline = time.monotonic() + cfg.learner.batch_wait_s
        while True:
            raw = None
            if self.ranks.main:
                while True:
                    if self.broadcaster.needs_sync():
                        raw = encode(wire.Resync.TYPE, {})
                        break
                    n_groups = stage_at(cfg, self.version).prompts_per_step  # D_R of the current stage
                    reply = self.buffer.call(wire.BatchRequest(version=self.version, n_groups=n_groups),
                                             cfg.net.request_timeout_s)
                    if reply.type == wire.BatchReply.TYPE:
                        raw = encode(wire.BatchReply.TYPE, reply.body)
                        break
                    try:
                        waiting = wire.parse(reply, wire.WaitReply)
                    except wire.ProtocolError:
                        raise RuntimeError(f"the buffer answered a batch request with {reply.type!r}: "
                                           f"{reply.body}") from None
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no batch from the buffer within learner.batch_wait_s="
                                           f"{cfg.learner.batch_wait_s}s (buffer holds {waiting.size} groups)")
            try:  # every rank checks the same bytes: a batch that does not parse is refused by all, who ask again
                msg = decode(self.ranks.broadcast_bytes(raw), cfg.buffer.max_message_bytes)
                if msg.type != wire.Resync.TYPE:
                    return parse_batch(msg, self.staleness_bound())
            except wire.ProtocolError as exc:
                self.batches_refused += 1
                self.log.warning("batch_refused", reason=exc.reason, detail=exc.detail, refused=self.batches_refused)
                continue
            self.publish()

    def staleness_bound(self) -> int:
        """The most staleness a batch may claim: η, or with buffer.stale_policy = "train" (stale groups kept) any
        age up to the current version."""
        return self.version if self.config.buffer.stale_policy == "train" else self.config.buffer.max_staleness

    def step(self, groups, staleness=None) -> dict:
        return train_step(self.policy, self.optimizer, groups, self.settings, self.controller, self.ranks,
                          self.reference, staleness)

    def published(self) -> list[tuple[str, torch.Tensor]]:
        """What a sync sends: the adapter tensors with LoRA (peft names, runtime/adapter.py), else the state dict."""
        if self.config.learner.lora.enabled:
            return adapter_named(self.policy.lm)
        return list(self.policy.lm.state_dict().items())

    def publish(self) -> float:
        """Every rank gathers, rank 0 broadcasts the weights (or the adapter) as the current version."""
        named = self.published()
        self.sent_bytes = sum(t.numel() * (self.dtype.itemsize if t.is_floating_point() else t.element_size())
                              for _, t in named)  # per version, what crosses the broadcast
        return publish(named, self.dtype, int(self.config.sync.bucket_mb * 2**20), self.broadcaster,
                       self.version, self.device)

    def request(self, message: wire.Body):
        """A request to the buffer from rank 0 (the other ranks get None)."""
        if self.ranks.main:
            return self.buffer.call(message, self.config.net.request_timeout_s)

    def run(self) -> dict:
        cfg = self.config
        self.request(wire.LearnerHello())
        self.request(wire.VersionUpdate(version=self.version))
        totals = {"tokens": 0, "broadcast_s": [], "staleness": []}
        budget = TimeBudget()  # where the wall time goes: roles/learner.json "time", summary.json
        timeline = Timeline()  # each training step's wall-clock interval and response tokens (the ratio advisor)
        started = time.perf_counter()
        for step in range(self.start_version, cfg.learner.steps):
            t0 = time.perf_counter()
            with budget.measure("waiting_for_batch"):
                groups, staleness, report = self.next_batch()
            t1, wall_t1 = time.perf_counter(), time.time()
            with budget.measure("training"):
                values = self.step(groups, staleness)
            t2 = time.perf_counter()
            timeline.add(wall_t1, time.time(), values["learner/tokens"])
            self.version += 1
            if self.version % cfg.sync.every == 0 or step == cfg.learner.steps - 1:
                with budget.measure("broadcasting"):
                    broadcast_s = self.publish()
                totals["broadcast_s"].append(broadcast_s)
                values["sync/broadcast_s"] = broadcast_s
                values["sync/sent_bytes"] = self.sent_bytes
            if self.broadcaster is not None:
                values.update(self.broadcaster.metrics())
            # The buffer learns the version only after the weights went out, so a grant for
            # version v never asks an actor for weights that are not on their way.
            with budget.measure("reporting_version"):
                self.request(wire.VersionUpdate(version=self.version))
            totals["tokens"] += values["learner/tokens"]
            totals["staleness"].extend(staleness)
            if self.ranks.main:
                elapsed = time.perf_counter() - started
                values.update({
                    "learner/step": step + 1,
                    "learner/version": self.version,
                    "learner/ranks": self.ranks.world,
                    "learner/wait_for_batch_s": t1 - t0,
                    "learner/step_s": t2 - t1,
                    "learner/tokens_per_s": values["learner/tokens"] / (t2 - t1),
                    "learner/wait_for_batch_frac": budget.seconds["waiting_for_batch"] / elapsed,
                    "learner/busy_frac": budget.busy_frac("training", "broadcasting"),
                    "learner/staleness_mean": float(np.mean(staleness)),
                    "learner/staleness_max": int(max(staleness)),
                    "learner/staleness_hist": np.bincount(staleness, minlength=cfg.buffer.max_staleness + 1).tolist(),
                    "learner/stage": stage_at(cfg, step).index,
                    **groups_metrics(report),
                })
                self.metrics.log(values, step=self.version)
                self.log.info("step", step=step + 1, reward=round(values["reward/mean"], 3),
                              loss=round(values["learner/loss"], 4), staleness_max=int(max(staleness)),
                              micro_batches=values["learner/micro_batches"], wait_s=round(t1 - t0, 3))
            # Every rank, after the step's metrics went out (a run resumed from here keeps the records before it).
            every = cfg.checkpoint.every_steps
            if every and self.version % every == 0 and self.version < cfg.learner.steps:
                with budget.measure("checkpointing"):
                    self.save_checkpoint()
        wall = time.perf_counter() - started
        with budget.measure("checkpointing"):
            self.save_checkpoint()
        with budget.measure("saving"):
            self.save_final()
        summary = {
            "time": budget.as_dict(),
            "steps": cfg.learner.steps,
            "resumed_from_step": self.start_version if self.resumed_from else None,
            "ranks": self.ranks.world,
            "tokens_per_s": totals["tokens"] / budget.seconds["training"] if budget.seconds.get("training") else 0.0,
            "wait_for_batch_frac": budget.seconds.get("waiting_for_batch", 0.0) / wall if wall else 0.0,
            "broadcast_s_mean": float(np.mean(totals["broadcast_s"])) if totals["broadcast_s"] else 0.0,
            "sync_bytes_per_version": self.sent_bytes,
            "lora": cfg.learner.lora.model_dump() if cfg.learner.lora.enabled else None,
            "staleness_trained": totals["staleness"],
            "wall_s": wall,
            "sync": dict(self.broadcaster.stats) if self.broadcaster is not None else {},
            "timeline": {"training": timeline.as_list(), "dropped": timeline.dropped},
        }
        if self.ranks.main:
            # Delivered before `done`: once the buffer hears it, the others may exit at any moment.
            write_role_summary(cfg, "learner", summary)
        self.ranks.barrier()  # no rank exits before learner.json exists (the launcher reads an early exit as a failure)
        self.request(wire.Done())
        if self.broadcaster is not None:
            self.broadcaster.close()
        self.ranks.close()
        return summary

    def gathered_state(self, dtype: torch.dtype) -> dict | None:
        """The whole policy in `dtype` (with LoRA: the adapter, peft names), gathered one tensor at a time (every
        rank takes part; rank 0 gets it, the others None)."""
        state = {}
        for name, t in self.published():
            whole = full_tensor(t.detach())
            if self.ranks.main:
                state[name] = whole.to(dtype if whole.is_floating_point() else whole.dtype).cpu()
        return state if self.ranks.main else None

    def save_checkpoint(self) -> None:
        """Checkpoint of the current version (learner/checkpoint.py), the buffer's state included."""
        start = time.perf_counter()
        reply = self.request(wire.CheckpointRequest())
        buffer_state = None
        if self.ranks.main:
            try:
                buffer_state = wire.parse(reply, wire.BufferState).state
            except wire.ProtocolError as exc:
                raise RuntimeError(f"the buffer did not send its state for the checkpoint: {exc}") from None
        cfg = self.config
        path = checkpoint.save(cfg.run_dir, self.version, self.version, self.policy, self.optimizer, self.ranks,
                               self.gathered_state(torch.float32),
                               {"version": self.version, "entropy_control": self.controller.state_dict()},
                               buffer_state, cfg.model.path, cfg.checkpoint.keep, protect=self.resumed_from,
                               adapter=lora_settings(cfg.learner.lora, cfg.model.path) if cfg.learner.lora.enabled
                               else None)
        if self.ranks.main:
            seconds = time.perf_counter() - start
            self.metrics.log({"learner/checkpoint_s": seconds}, step=self.version)
            self.log.info("checkpoint", path=path, seconds=round(seconds, 3))

    def save_final(self) -> None:
        """The policy in model.dtype, for evaluation and use (the checkpoints keep the fp32 masters). With LoRA:
        base + adapter merged, plus the adapter itself in `final/adapter/` (peft format, float32)."""
        cfg = self.config
        if cfg.learner.lora.enabled:
            adapter = self.gathered_state(torch.float32)
            if self.ranks.main:
                final, adapter_settings = RunDir(cfg.run_dir).final, lora_settings(cfg.learner.lora, cfg.model.path)
                write_merged(cfg.model.path, adapter_settings, adapter, final, cfg.model.dtype)
                write_adapter(os.path.join(final, "adapter"), adapter, adapter_settings)
            return
        state = self.gathered_state(self.dtype)
        if self.ranks.main:
            checkpoint.save_model(self.policy.lm, state, RunDir(self.config.run_dir).final, self.dtype,
                                  self.config.model.path)


def main(config: Config) -> None:
    summary = Learner(config).run()
    tlog.get("learner").info("exit", steps=summary["steps"])

