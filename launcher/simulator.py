"""A discrete-event simulator of our pipeline (simpy): actors, the buffer's admission rule, the learner.

It predicts, for a shape (actors, staleness bound η, batch and group sizes, chunking) and measured rates, what
a run would do: RL wall time, the learner's idle (waiting-for-batch) fraction, the actors' idle fraction, the
staleness of trained groups and throughput. The ratio advisor (issue 15 item 4) runs it over a range of
actor:learner splits.

What it models, and how it maps to the code:

* **Admission** is the buffer's own rule: `buffer/staleness.py` `StalenessBudget` is used as is (grants only
  while accepted + in flight < (η + v + 1) · groups per step; min_version = v − η; groups older than η at
  training are dropped, giving their slot back).
* **An actor** is one engine that shares `gen_tokens_per_s` among its running sequences (processor sharing:
  continuous batching at a fixed token rate). It keeps `prompts_per_chunk` prompts running: in "inflight"
  mode it asks for a new prompt as soon as a group finishes and loads new weights as soon as they are
  published (pausing `load_s`); in "chunk" mode it asks for a whole chunk, generates it to the end, then loads
  the newest weights. A group's `min_version` is the version loaded when it started.
* **The learner** waits for `prompts_per_step` fresh groups, trains for `tokens / learner_tokens_per_s +
  step_overhead_s` (tokens = prompt + response tokens of the batch), publishes (`sync_s`) and only then tells
  the buffer the new version, as learner/trainer.py does.
* **Lengths**: each response's length is drawn from `lengths` (an empirical sample, e.g. from a calibration
  run); a fixed list of one value gives fixed lengths.

Not modelled: CPU contention between roles on one host (cluster shapes give every role its own devices; on a
shared host pass rates measured under the same sharing), prefill cost beyond what the token rate absorbs,
network jitter, rejection sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import simpy

from buffer.staleness import StalenessBudget


@dataclass
class Rates:
    """What one actor engine and the learner achieve (measured: a calibration run, or a previous run)."""
    gen_tokens_per_s: float  # one engine, all its running sequences together
    learner_tokens_per_s: float  # the learner (all its ranks) while training
    sync_s: float = 0.0  # one weight publication (gather + broadcast), the learner's side
    load_s: float = 0.0  # an actor loading published weights
    step_overhead_s: float = 0.0  # per learner step, beyond the tokens
    lengths: list[int] = field(default_factory=lambda: [64])  # response lengths to draw from
    prompt_tokens: float = 8.0  # mean prompt length (the learner trains on prompt + response)


@dataclass
class Shape:
    actors: int
    max_staleness: int
    prompts_per_step: int
    group_size: int
    prompts_per_chunk: int
    steps: int
    update_mode: str = "inflight"  # or "chunk"
    seed: int = 0


@dataclass
class Prediction:
    wall_s: float  # RL wall time: first grant to the last step's publication
    learner_idle_frac: float  # learner waiting for a batch / wall
    actor_idle_frac: float  # mean over actors of (time with nothing running) / wall
    staleness_hist: list[int]  # trained groups per staleness
    dropped_stale: int
    trained_tokens_per_s: float

    @property
    def staleness_mean(self) -> float:
        h = np.asarray(self.staleness_hist, dtype=float)
        return float((h * np.arange(len(h))).sum() / h.sum()) if h.sum() else 0.0


@dataclass
class _Group:
    tokens: int  # prompt + response tokens of all samples
    min_version: int


class _Pipeline:
    def __init__(self, shape: Shape, rates: Rates):
        self.s, self.r = shape, rates
        self.env = simpy.Environment()
        self.rng = np.random.default_rng(shape.seed)
        self.budget = StalenessBudget(shape.max_staleness, shape.prompts_per_step)
        self.store: list[_Group] = []
        self.version = 0  # published (and reported to the buffer)
        self.changed = self.env.event()  # fires when capacity or the version may have changed
        self.group_arrived = self.env.event()
        self.learner_wait = 0.0
        self.actor_idle = [0.0] * shape.actors
        self.hist = [0] * (shape.max_staleness + 1)
        self.dropped = 0
        self.trained_tokens = 0
        self.done = False
        self.started = 0.0

    # ------------------------------------------------------------------ signals

    def _notify(self) -> None:
        event, self.changed = self.changed, self.env.event()
        event.succeed()

    def _arrived(self) -> None:
        event, self.group_arrived = self.group_arrived, self.env.event()
        event.succeed()

    # ------------------------------------------------------------------ learner

    def learner(self):
        s, r = self.s, self.r
        for step in range(s.steps):
            while True:
                stale = [g for g in self.store if not self.budget.is_fresh(g.min_version)]
                if stale:
                    self.store = [g for g in self.store if self.budget.is_fresh(g.min_version)]
                    self.dropped += len(stale)
                    self.budget.on_dropped(len(stale))
                    self._notify()
                if len(self.store) >= s.prompts_per_step:
                    break
                t0 = self.env.now
                yield self.group_arrived
                self.learner_wait += self.env.now - t0
            batch, self.store = self.store[:s.prompts_per_step], self.store[s.prompts_per_step:]
            for g in batch:
                self.hist[self.budget.staleness(g.min_version)] += 1
            tokens = sum(g.tokens for g in batch)
            self.trained_tokens += tokens
            yield self.env.timeout(tokens / r.learner_tokens_per_s + r.step_overhead_s)
            yield self.env.timeout(r.sync_s)
            self.version = step + 1
            self.budget.on_version(self.version)
            self._notify()
        self.done = True
        self._notify()

    # ------------------------------------------------------------------ actors

    def _lengths(self, n: int) -> np.ndarray:
        return self.rng.choice(np.asarray(self.r.lengths, dtype=float), size=n)

    def actor(self, i: int):
        s, r = self.s, self.r
        loaded = 0
        running: list[dict] = []  # {left: tokens per sample (array), min_version, tokens}
        while not self.done:
            # Load newer weights: in flight at once; in chunk mode only with nothing running.
            if self.version > loaded and (s.update_mode == "inflight" or not running):
                loaded = self.version
                if r.load_s:
                    yield self.env.timeout(r.load_s)
            # Ask for prompts: inflight refills free slots; chunk mode asks only when empty.
            free = s.prompts_per_chunk - len(running)
            if free > 0 and (s.update_mode == "inflight" or not running):
                n = self.budget.grant(free)
                for _ in range(n):
                    lens = self._lengths(s.group_size)
                    # Weights are published before the buffer hears the version, so what this actor has loaded
                    # is never older than a grant's min_version (v - η): the group starts on `loaded`.
                    running.append({"left": lens.copy(), "min_version": loaded,
                                    "tokens": int(lens.sum() + s.group_size * r.prompt_tokens)})
            if not running:
                t0 = self.env.now
                yield self.changed
                self.actor_idle[i] += self.env.now - t0
                continue
            # Processor sharing: every unfinished sample advances at rate / (unfinished samples).
            active = sum(int((g["left"] > 0).sum()) for g in running)
            first = min(float(g["left"][g["left"] > 0].min()) for g in running)
            t0 = self.env.now
            wake = self.env.timeout(first * active / r.gen_tokens_per_s)
            interrupt = self.changed if (s.update_mode == "inflight" and free > 0) else None
            yield wake | interrupt if interrupt is not None else wake
            progressed = (self.env.now - t0) * r.gen_tokens_per_s / active
            finished = []
            for g in running:
                g["left"] = np.maximum(g["left"] - progressed, 0.0)
                g["left"][g["left"] < 1e-9] = 0.0
                if not (g["left"] > 0).any():
                    finished.append(g)
            for g in finished:
                running.remove(g)
                self.budget.on_group_accepted()
                self.store.append(_Group(g["tokens"], g["min_version"]))
            if finished:
                self._arrived()

    def run(self) -> Prediction:
        for i in range(self.s.actors):
            self.env.process(self.actor(i))
        learner = self.env.process(self.learner())
        self.env.run(until=learner)
        wall = self.env.now
        return Prediction(wall_s=wall, learner_idle_frac=self.learner_wait / wall if wall else 0.0,
                          actor_idle_frac=float(np.mean(self.actor_idle)) / wall if wall else 0.0,
                          staleness_hist=self.hist, dropped_stale=self.dropped,
                          trained_tokens_per_s=self.trained_tokens / wall if wall else 0.0)


def simulate(shape: Shape, rates: Rates) -> Prediction:
    """Run the pipeline for `shape.steps` learner steps; deterministic for a given `shape.seed`."""
    return _Pipeline(shape, rates).run()
