"""The actor's decode loop: keep the engine full, hand each group on as soon as it is complete.

When weights may be loaded, how many prompts the engine has room for and when to ask for them is one rule,
actors/refill.py `RefillRule` (`settings.refill`), which the pipeline simulator calls too. One `tick`:
  1. weights: take newly staged weights; load them when the rule allows
     (`update_mode = "inflight"`: between two decoding steps, running sequences
     kept; `"chunk"`: once the engine has drained, the old behaviour, for
     comparison). With `inflight_kv = "recompute"` every running sequence is
     restarted on the new weights from its prompt plus the tokens so far (its
     KV recomputed); with `"keep"` it continues on its KV cache as it is
     (PipelineRL's way). Only "recompute" needs each step's tokens (to restart
     from them); otherwise a sequence reports once, when it finishes, with its
     tokens' versions;
  2. prompts: ask the buffer for a grant when the rule says there is room
     worth asking for (inflight: about a quarter of `target_sequences` free,
     counting granted sequences not yet started, or any room in an empty
     engine; chunk: `prompts_per_chunk` prompts once the engine has drained
     and no grant or weights wait),
     and at least every `heartbeat_s` (for 0 prompts when full), so a `stop`
     is heard while long sequences run;
  3. start granted prompts whose `min_version` the engine has reached (a
     grant that needs newer weights waits for them up to `grant_wait_s`, then
     goes back to the buffer);
  4. one engine step; every token is recorded with its behaviour log-prob
     and the version that sampled it; a group whose last sequence finished
     goes to the outbox (scored and sent on another thread).

Multi-turn tasks (`episodes`, actors/episodes.py): each sample is an episode, one engine request per turn; a
turn that ends leaves the engine while its environment step runs on another thread (its slot free for other
sequences), and each tick starts the next turns of the episodes whose environment answered. Chunk mode loads
weights only while no turn decodes (between turns); inflight mode also within turns.

Producers: the buffer (grants, through `link`), the weight receiver thread (staged weights, through
`weights`), the engine (tokens) and the environment threads (observations). Consumer of the
finished groups: the outbox thread (actors/outbox.py).
Blocking: every request to the buffer (`ask`, `give_back`) waits for its reply, at most
`net.request_timeout_s` (an idle engine's `ask` may also be held up to `grant_hold_s` in the buffer); `put`
waits while the outbox is full, at most `outbox_timeout_s`; an idle engine waits up to 0.5 s for the
weights a grant needs, up to 0.05 s for an episode's environment step, or up to 0.05 s until the buffer
may have room. Dropped: staged weights not yet
loaded when newer ones arrive; at `stop`, the sequences still generating (aborted) and grants not yet
started (the learner is done). Timeouts: a grant whose weights do not come within `grant_wait_s` goes back
to the buffer (`grant_return`); a buffer request with no reply, a full outbox past `outbox_timeout_s` or a
failed outbox / weight receiver raise, and the actor exits with the error (the launcher may restart it).

The engine, buffer link, weight source and outbox are injected (see
tests/unit/test_rollout.py for fakes): `engine` has add / step / abort /
running / load_weights; `weights` has take / wait_for; `link` has ask /
give_back; `outbox` has put.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np

from asyncor.actors.buffer_link import Grant
from asyncor.actors.refill import RefillRule
from asyncor.actors.sequences import InFlight
from asyncor.telemetry.time_budget import TimeBudget
from asyncor.telemetry.timeline import Timeline
from asyncor.wire import messages as wire


@dataclass(frozen=True)
class RolloutSettings:
    refill: RefillRule = RefillRule()  # update mode, engine size, when to load and to ask (actors/refill.py)
    inflight_kv: str = "keep"  # "keep" | "recompute"
    group_size: int = 8  # samples per prompt until a grant says otherwise
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_id: int = 2
    grant_wait_s: float = 30.0
    outbox_timeout_s: float = 120.0
    metrics_every_s: float = 2.0
    grant_hold_s: float = 0.5  # an idle engine's grant request may wait this long in the buffer for room
    heartbeat_s: float = 1.0  # ask (for 0 prompts if there is no room) at least this often: learns of `stop` in time
    probe_prompt: np.ndarray | None = field(default=None, compare=False)  # greedy probe after each load
    seed: int | None = None  # actors.seeded_requests: requests' sampling seeds derive from this (else engine's)

    @property
    def update_mode(self) -> str:
        """The rule's update mode (the actor's summary reports it)."""
        return self.refill.update_mode


def request_seed(run_seed: int, prompt_id: int, version: int, sample: int = 0, tokens_done: int = 0) -> int:
    """A request's sampling seed from what it is, never from when it ran: run seed, prompt, policy version, the
    sample's index in its group and (a restarted sequence) how many tokens it already has."""
    digest = hashlib.blake2b(f"{run_seed}/{prompt_id}/{version}/{sample}/{tokens_done}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 2  # vLLM adds the sample index: stay well inside int64


@dataclass
class _Pending:
    grant: Grant
    since: float


class Rollout:
    def __init__(self, engine, link, weights, outbox, settings: RolloutSettings, log, metrics=None,
                 on_loaded=None, pause=None, episodes=None):
        self.engine, self.link, self.weights, self.outbox = engine, link, weights, outbox
        self.episodes = episodes  # actors/episodes.py Episodes (multi-turn tasks), else None
        self.s = settings
        self.rule = settings.refill
        self.log, self.metrics = log, metrics
        self.on_loaded = on_loaded  # (staged, load_s) -> None: the actor's per-load metrics
        self.pause = pause  # optional: .due(version) -> bool and .run(version) (held-out evaluation, engine idle)
        self.version = 0
        self.inflight = InFlight()
        if episodes is not None:
            episodes.bind(self.inflight, self.add_turn, self.complete)
        self.pending: list[_Pending] = []
        self.staged = None  # weights received and not yet loaded
        self.stopped = False
        self.n = settings.group_size  # latest grant's group size
        self.retry_at = 0.0
        self.last_ask = 0.0
        self.budget = TimeBudget()
        self.timeline = Timeline()  # each engine step's wall-clock interval and tokens (studies/calibration.py)
        self.stats = {"tokens": 0, "steps": 0, "restarted": 0, "returned": 0,
                      "first_token_s": []}
        self._window = {"start": time.perf_counter(), "tokens": 0, "gen_s": 0.0, "occupancy": 0.0, "steps": 0}
        self._first_token_due: float | None = None  # staged_at of weights loaded, until a step uses them
        self.stream = self.rule.update_mode == "inflight" and settings.inflight_kv == "recompute"
        self._probes: dict[str, dict] = {}  # request id -> {version, logprob}

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        self.budget = TimeBudget()
        while not self.stopped:
            self.tick()
        self.engine.abort(self.inflight.drop_all())
        if self.episodes is not None:
            self.episodes.close()
        while self._probes and self.engine.running():  # a few greedy tokens: every loaded version gets its probe
            self.decode()

    def tick(self) -> None:
        self.take_weights()
        draining = self.pause is not None and self.pause.due(self.version)
        if draining and not self.engine.running() and not self.pending:
            with self.budget.measure("evaluating"):
                self.pause.run(self.version)
            return
        if not draining and (self.wants_prompts() or time.perf_counter() - self.last_ask > self.s.heartbeat_s):
            self.ask()
        self.start_ready()
        if self.episodes is not None:  # episodes just opened, or whose environment answered: into this step
            self.episodes.next_turns()
        if self.engine.running():
            self.decode()
            if self.episodes is not None:  # turns that just ended and whose environment answered at once (inline)
                self.episodes.next_turns()  # join the very next engine step
        elif not self.stopped:
            self.idle()

    # ------------------------------------------------------------------ weights

    def take_weights(self) -> None:
        staged = self.weights.take()
        if staged is not None:
            self.staged = staged  # a newer one replaces one still waiting
        if self.staged is not None and self.rule.may_load(self.engine.running()):
            staged, self.staged = self.staged, None
            self.load(staged)

    def load(self, staged) -> None:
        start = time.perf_counter()
        with self.budget.measure("loading_weights"):
            self.engine.load_weights(staged.tensors, staged.version)
            self.version = staged.version
            if self.stream:  # inflight + recompute (in chunk mode nothing runs at a load)
                self.restart_running()
        load_s = time.perf_counter() - start
        self._first_token_due = getattr(staged, "staged_at", start)
        if self.on_loaded is not None:
            self.on_loaded(staged, load_s)
        if self.s.probe_prompt is not None:
            self.start_probe()

    def restart_running(self) -> None:
        """Re-read every running sequence (prompt + tokens so far) on the new weights."""
        running = self.inflight.running()
        if not running:
            return
        old = [self.inflight.restart(seq) for seq in running]
        self.engine.abort(old)
        for seq in running:
            self.engine.add(seq.request_id, seq.resume_prompt(), seq.tokens_left, self.s.temperature, self.s.top_p,
                            self.s.stop_token_id, salt=f"v{self.version}", stream=True,
                            seed=self.seed_of(seq.prompt.prompt_id, seq.index, len(seq.tokens)), **self._stops(seq))
        self.stats["restarted"] += len(running)

    # ------------------------------------------------------------------ prompts

    def free_prompts(self) -> int:
        """How many more prompts the engine has room for now (none while stopped or told to wait)."""
        if self.stopped or time.perf_counter() < self.retry_at:
            return 0
        queued = sum(len(p.grant.prompts) for p in self.pending) * self.n
        episodes_wait = self.episodes is not None and self.inflight.waiting() > 0  # chunk mode: not drained yet
        return self.rule.room(self.engine.running(), queued, self.n,
                              waiting=bool(self.pending) or self.staged is not None or episodes_wait)

    def wants_prompts(self) -> bool:
        return self.rule.should_ask(self.free_prompts(), self.engine.running(), self.n)

    def ask(self) -> None:
        self.last_ask = time.perf_counter()
        idle = not self.engine.running() and not self.pending and self.staged is None
        with self.budget.measure("waiting_for_grant"):
            reply = self.link.ask(self.free_prompts(), self.version, self.s.grant_hold_s if idle else 0.0)
        if isinstance(reply, wire.Stop):
            self.stopped = True
        elif isinstance(reply, wire.WaitReply):
            self.retry_at = time.perf_counter() + reply.retry_s
        elif isinstance(reply, Grant):
            self.n = reply.n
            self.pending.append(_Pending(reply, time.perf_counter()))

    def start_ready(self) -> None:
        now = time.perf_counter()
        keep = []
        for p in self.pending:
            if self.version >= p.grant.min_version:
                for prompt in p.grant.prompts:
                    self.start_group(prompt, p.grant.n, p.grant.max_tokens)
            elif now - p.since > self.s.grant_wait_s:
                self.log.warning("grant_returned", need=p.grant.min_version, have=self.version)
                self.link.give_back([q.prompt_id for q in p.grant.prompts])
                self.stats["returned"] += len(p.grant.prompts)
            else:
                keep.append(p)
        self.pending = keep

    def start_group(self, prompt, n: int, max_tokens: int) -> None:
        """Streamed sequences (recompute) are one request each; otherwise the group is one request of n, which
        vLLM prepares once and reports whole when its last sequence ends. Episodes start when their environment
        has opened them (`next_turns`)."""
        if self.episodes is not None:
            self.episodes.open(self.inflight.start_episodes(prompt, n, max_tokens))
            return
        sequences = self.inflight.start(prompt, n, max_tokens, together=not self.stream)
        first: dict[str, object] = {}  # each engine request's first sequence
        for seq in sequences:
            first.setdefault(seq.engine_request, seq)
        for seq in first.values():
            self.engine.add(seq.engine_request, prompt.token_ids, max_tokens, self.s.temperature, self.s.top_p,
                            self.s.stop_token_id, salt=f"v{self.version}", stream=self.stream,
                            n=1 if self.stream else n, seed=self.seed_of(prompt.prompt_id, seq.index))

    def seed_of(self, prompt_id: int, sample: int, tokens_done: int = 0) -> int | None:
        """actors.seeded_requests: the request's own sampling seed (request_seed); else None (engine's stream)."""
        if self.s.seed is None:
            return None
        return request_seed(self.s.seed, prompt_id, self.version, sample, tokens_done)

    # ------------------------------------------------------------------ decoding

    def decode(self) -> None:
        running = self.engine.running()
        start, wall_start = time.perf_counter(), time.time()
        with self.budget.measure("generating"):
            deltas = self.engine.step()
        gen_s = time.perf_counter() - start
        wall_end = time.time()
        tokens = 0
        for d in deltas:
            if d.request_id in self._probes:
                self.record_probe(d)
                continue
            tokens += len(d.token_ids)
            if self.episodes is not None:
                self.episodes.record(d, self.version)
                continue
            group = self.inflight.record(d.request_id, d.token_ids, d.logprobs, self.version, d.finish_reason,
                                         d.versions)
            if group is not None:
                with self.budget.measure("waiting_for_outbox"):
                    self.outbox.put(group, self.s.outbox_timeout_s)
        if running and self._first_token_due is not None:  # every running sequence sampled on the new weights
            self.stats["first_token_s"].append(time.perf_counter() - self._first_token_due)
            self._first_token_due = None
        self.stats["tokens"] += tokens
        self.stats["steps"] += 1
        self.timeline.add(wall_start, wall_end, tokens)
        w = self._window
        w["tokens"] += tokens
        w["gen_s"] += gen_s
        w["occupancy"] += running / self.rule.target_sequences
        w["steps"] += 1
        if self.metrics is not None and time.perf_counter() - w["start"] >= self.s.metrics_every_s:
            self.flush_metrics()

    # ------------------------------------------------------------------ episodes

    def _stops(self, seq) -> dict:
        """An episode's turn also stops at the environment's turn-end tokens."""
        return {"extra_stop_ids": self.episodes.env.turn_end_ids} if seq.multi_turn else {}

    def add_turn(self, seq, request_id: str, prompt) -> None:
        """Start an episode's next turn in the engine (actors/episodes.py calls it)."""
        self.engine.add(request_id, prompt, seq.tokens_left, self.s.temperature, self.s.top_p, self.s.stop_token_id,
                        salt=f"v{self.version}", stream=self.stream,
                        seed=self.seed_of(seq.prompt.prompt_id, seq.index, len(seq.tokens)), **self._stops(seq))

    def complete(self, group) -> None:
        with self.budget.measure("waiting_for_outbox"):
            self.outbox.put(group, self.s.outbox_timeout_s)

    def idle(self) -> None:
        """Nothing in the engine: wait for the weights a grant needs, or until the buffer may have room."""
        if self.pending:
            need = min(p.grant.min_version for p in self.pending)
            with self.budget.measure("waiting_for_weights"):
                staged = self.weights.wait_for(need, 0.5)
            if staged is not None:
                self.staged = staged
            return
        if self.staged is not None:
            return
        if self.episodes is not None and self.episodes.waiting():
            with self.budget.measure("waiting_for_environment"):
                self.episodes.wait(0.05)  # until an environment step finishes (or the next heartbeat)
            return
        with self.budget.measure("waiting_for_grant"):
            time.sleep(min(max(self.retry_at - time.perf_counter(), 0.0), 0.05))

    # ------------------------------------------------------------------ probe and metrics

    def start_probe(self) -> None:
        """4 greedy tokens of a fixed prompt on the weights just loaded (one probe per version; a probe still
        running at the next load finishes on the newer weights, like any running sequence in "keep" mode)."""
        request_id = f"probe-v{self.version}"
        self._probes[request_id] = {"version": self.version, "logprob": 0.0}
        self.engine.add(request_id, self.s.probe_prompt, 4, 0.0, 1.0, self.s.stop_token_id, salt=f"v{self.version}")

    def record_probe(self, d) -> None:
        probe = self._probes[d.request_id]
        probe["logprob"] += float(np.sum(d.logprobs))
        if d.finish_reason is not None:
            del self._probes[d.request_id]
            if self.metrics is not None:
                self.metrics.log({"actor/probe_logprob": probe["logprob"]}, step=probe["version"])

    def flush_metrics(self) -> None:
        w = self._window
        episodes = {}
        if self.episodes is not None and self.episodes.stats.episodes:
            e = self.episodes.stats.summary()
            episodes = {"actor/turns_per_episode": e["turns_mean"], "actor/tokens_per_turn": e["tokens_per_turn"],
                        "actor/env_s_per_step": e["env_s_per_step"], "actor/episodes_waiting": self.inflight.waiting(),
                        "actor/prefix_cached_frac": e["prefix_cached_frac"],
                        **{f"actor/episode_end/{k}": v for k, v in e["end_reasons"].items() if v}}
        self.metrics.log({
            **episodes,
            "actor/tokens_per_s": w["tokens"] / w["gen_s"] if w["gen_s"] else 0.0,
            "actor/occupancy": w["occupancy"] / w["steps"] if w["steps"] else 0.0,
            "actor/busy_frac": self.budget.busy_frac("generating"),
            "actor/version": self.version, "actor/tokens": self.stats["tokens"],
        }, step=self.version)
        self._window = {"start": time.perf_counter(), "tokens": 0, "gen_s": 0.0, "occupancy": 0.0, "steps": 0}
