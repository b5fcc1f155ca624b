"""A discrete-event simulator of our pipeline (simpy): actors, the buffer's admission rule, the learner.

It predicts, for a shape (actors, staleness bound η, batch and group sizes, chunking) and measured rates, what
a run would do: RL wall time, the learner's idle (waiting-for-batch) fraction, the actors' idle fraction, the
staleness of trained groups and throughput. The ratio advisor (`launch.py advise`, studies/advisor.py) runs
it over a range of actor:learner splits.

What it models, and how it maps to the code:

* **Admission** is the buffer's own rule: `buffer/staleness.py` `StalenessBudget` is used as is (grants only
  while accepted + in flight < (η + v + 1) · groups per step; min_version = v − η; groups older than η at
  training are dropped, giving their slot back).
* **An actor** is one engine whose decoding step gives every running sequence one token and takes
  `gen_step_s + running / gen_tokens_per_s` (continuous batching: a fixed cost per step, as on a GPU reading
  the weights, plus a cost per sequence; `gen_step_s = 0` is a fixed token rate shared by the sequences).
  When it loads published weights (pausing `load_s`), how many prompts it has room for and when it asks for
  them is the actor's own rule, `actors/refill.py` `RefillRule`, called as is on an engine of
  `prompts_per_chunk` groups: in "inflight" mode it loads new weights between decoding steps and refills when
  about a quarter of its prompts have finished (any room when nothing runs); in "chunk" mode it asks for a
  whole chunk, generates it to the end, then loads the newest weights. The simulator's unit is the group: a
  group holds its `group_size` slots until its last sample ends (the engine frees each sample's slot as it
  ends), and it wakes for new weights or room at the buffer only while it has room. A group's `min_version`
  is the version loaded when it started.
* **The learner** waits for `prompts_per_step` fresh groups (plus `handoff_s`, counted as waiting), trains
  for `tokens / learner_tokens_per_s` (tokens = the batch's response tokens), then spends `sync_s +
  step_overhead_s` publishing and on bookkeeping, and only then tells the buffer the new version, as
  learner/trainer.py does.
* **Lengths**: each response's length is drawn from `lengths` (an empirical sample, e.g. from a calibration
  run); a fixed list of one value gives fixed lengths.

* **Overheads** measured in a run: the learner's per-step bookkeeping (`step_overhead_s`), the round trips that
  hand a batch to it and the new version back (`handoff_s`), an actor's per-group bookkeeping that pauses its engine
  (`group_overhead_s`), weight loading, and rejection sampling (`keep_frac`: the share of generated groups
  that are kept; the rest free their admission slot and are generated again).
* **Sharing a host** (`Shape.shared_host`, e.g. every role on one CPU machine): a busy role slows the others,
  `speed = 1 / (1 + Σ slowdown)` over the other busy roles: `actor_slowdown_learner` while the learner trains,
  `actor_slowdown_actor` per other generating actor, `actor_slowdown_both` more while both kinds work (three
  roles on two cores are worse than the sum of pairs), `learner_slowdown_actor` while any actor generates
  (studies/calibration.py measures them from a run's timelines). On a cluster every role has its own devices
  and they are unused.

Not modelled: prefill cost beyond what the token rate absorbs, network jitter, a learner whose speed depends
on the batch's length mix (it trains at a fixed response-token rate), vLLM's start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import simpy

from asyncor.actors.refill import RefillRule
from asyncor.buffer.staleness import StalenessBudget


@dataclass
class Rates:
    """What one actor engine and the learner achieve (measured: a calibration run, or a previous run)."""
    gen_tokens_per_s: float  # one engine alone, all its running sequences together, beyond gen_step_s
    learner_tokens_per_s: float  # the learner (all its ranks) while training, in response tokens per second
    gen_step_s: float = 0.0  # one engine's fixed cost per decoding step, whatever it runs (0: a pure token rate)
    sync_s: float = 0.0  # one weight publication (gather + broadcast), the learner's side
    load_s: float = 0.0  # an actor loading published weights
    step_overhead_s: float = 0.0  # per learner step, beyond training and publishing
    handoff_s: float = 0.0  # per learner step: handing the batch to the learner and the version back (waiting)
    group_overhead_s: float = 0.0  # per finished group: the actor's bookkeeping, its engine paused
    keep_frac: float = 1.0  # share of generated groups kept by rejection sampling
    lengths: list[int] = field(default_factory=lambda: [64])  # response lengths to draw from
    length_counts: list[int] | None = None  # how often each of `lengths` occurs (None: equally often)
    actor_slowdown_learner: float = 0.0  # shared host: an actor's extra time per unit while the learner trains
    actor_slowdown_actor: float = 0.0  # shared host: ... per other actor generating
    actor_slowdown_both: float = 0.0  # shared host: ... more while the learner and another actor both work
    learner_slowdown_actor: float = 0.0  # shared host: the learner's extra time while any actor generates


@dataclass
class Shape:
    actors: int
    max_staleness: int
    prompts_per_step: int
    group_size: int
    prompts_per_chunk: int  # chunk mode: prompts per grant; inflight: prompts kept running
    steps: int
    update_mode: str = "inflight"  # or "chunk"
    shared_host: bool = False  # every role on one host: apply the Rates' slowdowns
    seed: int = 0


@dataclass
class Prediction:
    wall_s: float  # RL wall time: first grant to the last step's publication
    learner_idle_frac: float  # learner waiting for a batch / wall
    actor_idle_frac: float  # mean over actors of (time with nothing running) / wall
    staleness_hist: list[int]  # trained groups per staleness
    dropped_stale: int
    trained_tokens_per_s: float  # response tokens trained per second of wall
    steady_wall_s: float = 0.0  # from the end of the first step to the end of the last (what a run's metrics give)
    steady_idle_frac: float = 0.0  # the learner's waiting over that span

    @property
    def staleness_mean(self) -> float:
        h = np.asarray(self.staleness_hist, dtype=float)
        return float((h * np.arange(len(h))).sum() / h.sum()) if h.sum() else 0.0


@dataclass
class _Group:
    tokens: int  # response tokens of all samples
    min_version: int


class _Pipeline:
    def __init__(self, shape: Shape, rates: Rates):
        if shape.actors < 1 or shape.steps < 1 or shape.prompts_per_step < 1 or shape.prompts_per_chunk < 1:
            raise ValueError(f"a shape needs at least one actor, step, prompt per step and per chunk: {shape}")
        if rates.gen_tokens_per_s <= 0 or rates.learner_tokens_per_s <= 0 or not 0 < rates.keep_frac <= 1:
            raise ValueError(f"rates need positive token rates and 0 < keep_frac <= 1: {rates}")
        self.s, self.r = shape, rates
        # The actor's rule on an engine of prompts_per_chunk groups (the shape's prompts kept running).
        self.refill = RefillRule(shape.update_mode, shape.prompts_per_chunk * shape.group_size,
                                 shape.prompts_per_chunk)
        self.env = simpy.Environment()
        self.rng = np.random.default_rng(shape.seed)
        self.budget = StalenessBudget(shape.max_staleness, shape.prompts_per_step)
        self.store: list[_Group] = []
        self.version = 0  # published (and reported to the buffer)
        self.changed = self.env.event()  # fires when capacity or the version may have changed
        self.group_arrived = self.env.event()
        self.speed_changed = self.env.event()  # fires when a role on the shared host starts or stops working
        self.learner_busy = False
        self.actors_busy: set[int] = set()
        self.learner_wait = 0.0
        self.step_ends: list[float] = []
        self.step_waits: list[float] = []
        self.actor_idle = [0.0] * shape.actors
        self.hist = [0] * (shape.max_staleness + 1)
        self.dropped = 0
        self.trained_tokens = 0
        self.done = False
        lengths = np.asarray(rates.lengths, dtype=float)
        counts = np.asarray(rates.length_counts if rates.length_counts is not None else [1] * len(lengths), float)
        if len(lengths) == 0 or len(counts) != len(lengths) or counts.sum() <= 0 or (lengths < 1).any():
            raise ValueError("rates.lengths must be response lengths >= 1, with one positive count each")
        self.lengths, self.length_p = lengths, counts / counts.sum()

    # ------------------------------------------------------------------ signals

    def _notify(self) -> None:
        event, self.changed = self.changed, self.env.event()
        event.succeed()

    def _arrived(self) -> None:
        event, self.group_arrived = self.group_arrived, self.env.event()
        event.succeed()

    def _set_busy(self, learner: bool | None = None, actor: int | None = None, busy: bool = True) -> None:
        before = (self.learner_busy, len(self.actors_busy))
        if learner is not None:
            self.learner_busy = learner
        if actor is not None:
            (self.actors_busy.add if busy else self.actors_busy.discard)(actor)
        if self.s.shared_host and before != (self.learner_busy, len(self.actors_busy)):
            event, self.speed_changed = self.speed_changed, self.env.event()
            event.succeed()

    def _actor_speed(self, i: int) -> float:
        if not self.s.shared_host:
            return 1.0
        others = len(self.actors_busy - {i})
        r = self.r
        return 1.0 / (1.0 + r.actor_slowdown_learner * self.learner_busy + r.actor_slowdown_actor * others
                      + r.actor_slowdown_both * (self.learner_busy and others > 0))

    def _learner_speed(self) -> float:
        if not self.s.shared_host:
            return 1.0
        return 1.0 / (1.0 + self.r.learner_slowdown_actor * bool(self.actors_busy))

    # ------------------------------------------------------------------ learner

    def _train(self, seconds_alone: float):
        """Work that takes `seconds_alone` without contention, slower while actors share the host."""
        self._set_busy(learner=True)
        left = seconds_alone
        while left > 1e-12:
            speed, t0, changed = self._learner_speed(), self.env.now, self.speed_changed
            yield self.env.timeout(left / speed) | changed
            left -= (self.env.now - t0) * speed
        self._set_busy(learner=False)

    def learner(self):
        s, r = self.s, self.r
        for step in range(s.steps):
            t_wait = self.env.now
            while True:
                stale = [g for g in self.store if not self.budget.is_fresh(g.min_version)]
                if stale:
                    self.store = [g for g in self.store if self.budget.is_fresh(g.min_version)]
                    self.dropped += len(stale)
                    self.budget.on_dropped(len(stale))
                    self._notify()
                if len(self.store) >= s.prompts_per_step:
                    break
                yield self.group_arrived
            batch, self.store = self.store[:s.prompts_per_step], self.store[s.prompts_per_step:]
            if r.handoff_s:
                yield self.env.timeout(r.handoff_s)
            self.step_waits.append(self.env.now - t_wait)
            self.learner_wait += self.env.now - t_wait
            for g in batch:
                self.hist[self.budget.staleness(g.min_version)] += 1
            tokens = sum(g.tokens for g in batch)
            self.trained_tokens += tokens
            yield from self._train(tokens / r.learner_tokens_per_s)
            yield self.env.timeout(r.sync_s + r.step_overhead_s)
            self.version = step + 1
            self.budget.on_version(self.version)
            self.step_ends.append(self.env.now)
            self._notify()
        self.done = True
        self._notify()

    # ------------------------------------------------------------------ actors

    def _new_group(self, loaded: int) -> dict:
        lens = self.rng.choice(self.lengths, size=self.s.group_size, p=self.length_p)
        return {"left": lens.copy(), "min_version": loaded, "tokens": int(lens.sum())}

    def actor(self, i: int):
        s, r, rule = self.s, self.r, self.refill
        loaded = 0
        running: list[dict] = []  # {left: tokens per sample (array), min_version, tokens}
        while not self.done:
            if self.version > loaded and rule.may_load(len(running)):
                loaded = self.version
                if r.load_s:
                    yield self.env.timeout(r.load_s)
            # No grant waits to start (one starts at once), and no weights count as waiting: a version published
            # during a chunk-mode load waits for the next chunk (the actor would load it before asking).
            free = rule.room(len(running) * s.group_size, 0, s.group_size)
            if rule.should_ask(free, len(running), s.group_size):
                # Weights are published before the buffer hears the version, so what this actor has loaded
                # is never older than a grant's min_version (v - η): the group starts on `loaded`.
                running.extend(self._new_group(loaded) for _ in range(self.budget.grant(free)))
            if not running:
                self._set_busy(actor=i, busy=False)
                t0 = self.env.now
                yield self.changed
                self.actor_idle[i] += self.env.now - t0
                continue
            self._set_busy(actor=i, busy=True)
            # Processor sharing: every unfinished sample advances at rate / (unfinished samples).
            active = sum(int((g["left"] > 0).sum()) for g in running)
            first = min(float(g["left"][g["left"] > 0].min()) for g in running)
            # Tokens per second for each running sample: one token per engine step of gen_step_s + active / rate.
            per_sample = self._actor_speed(i) / (r.gen_step_s + active / r.gen_tokens_per_s)
            t0 = self.env.now
            events = [self.env.timeout(first / per_sample)]
            if free > 0 and rule.may_load(len(running)):  # chunk mode acts on news only once its chunk is done
                events.append(self.changed)
            if s.shared_host:
                events.append(self.speed_changed)
            yield self.env.any_of(events)
            progressed = (self.env.now - t0) * per_sample
            for g in running:
                g["left"] = np.maximum(g["left"] - progressed, 0.0)
                g["left"][g["left"] < 1e-9] = 0.0
            finished = [g for g in running if not (g["left"] > 0).any()]
            running = [g for g in running if (g["left"] > 0).any()]
            for g in finished:
                self.budget.on_group_accepted()
                if self.rng.random() < r.keep_frac:
                    self.store.append(_Group(g["tokens"], g["min_version"]))
                else:  # rejection sampling: the buffer drops it and frees its slot
                    self.budget.on_dropped(1)
            if finished:
                self._arrived()
                self._notify()
                if r.group_overhead_s:
                    yield self.env.timeout(r.group_overhead_s * len(finished))

    def run(self) -> Prediction:
        for i in range(self.s.actors):
            self.env.process(self.actor(i))
        learner = self.env.process(self.learner())
        self.env.run(until=learner)
        wall = self.env.now
        steady = self.step_ends[-1] - self.step_ends[0] if len(self.step_ends) > 1 else 0.0
        return Prediction(wall_s=wall, learner_idle_frac=self.learner_wait / wall if wall else 0.0,
                          actor_idle_frac=float(np.mean(self.actor_idle)) / wall if wall else 0.0,
                          staleness_hist=self.hist, dropped_stale=self.dropped,
                          trained_tokens_per_s=self.trained_tokens / wall if wall else 0.0,
                          steady_wall_s=steady,
                          steady_idle_frac=sum(self.step_waits[1:]) / steady if steady else 0.0)


def simulate(shape: Shape, rates: Rates) -> Prediction:
    """Run the pipeline for `shape.steps` learner steps; deterministic for a given `shape.seed`."""
    return _Pipeline(shape, rates).run()
