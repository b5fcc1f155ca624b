"""The rates a finished run achieved, for the pipeline simulator (studies/simulator.py) and the ratio advisor.

    cal = calibrate([load_run("runs/cal-eta0"), load_run("runs/cal-eta2")])   # one run or several
    cal.rates        # simulator.Rates: generation and training rates, sync, overheads, lengths, slowdowns
    cal.notes        # how each figure was obtained, for advice.md
    measured(run)    # what the run did: steady-state wall time and the learner's idle fraction
    shape_of(run.config)   # the run's simulator.Shape; its actors' refill rule is actors/refill.py's, as they ran it

Where each figure comes from (roles/<role>.json, the roles' final figures sent at exit, and metrics.jsonl):

* **Rates and slowdowns** from the roles' timelines (telemetry/timeline.py): every engine step of every actor
  (wall-clock interval, tokens = its running sequences) and every training step of the learner (interval,
  response tokens). For each interval we compute the share of it during which the other roles were busy:
      engine step:   seconds = (step_s + tokens / gen_rate) · (1 + a_L·f_learner + a_A·f_other_actors
                                                              + a_LA·f_learner_and_other_actor)
      learner step:  seconds = tokens · (1 + l_A · f_any_actor) / learner_rate
  step_s and gen_rate by least squares on the engine steps that overlapped nothing, the slowdowns then from
  all (`fit_engine`); the learner's by weighted least squares (`fit_rate`). So the rates are what a role
  achieves alone and the a's and l_A how much it slows beside the others on a shared host (with roles on
  their own devices they come out ~0; three roles on two cores can be worse than the sum of pairs: a_LA).
  The slowdowns depend on how the roles are laid out on the host's cores, so they are fitted per actor
  count (a run with one actor pins the learner to the other core; with two actors on two cores it shares
  them), as are the load and sync times. A layout whose roles never overlapped (buffer.max_staleness = 0)
  cannot show the slowdowns: they are then 0, and the notes say so.
* **Weight sync**: the learner's mean publication time and the actors' mean load time, per layout.
* **Overheads**: the learner's per-step time outside training, publishing and waiting; the actors' time
  outside generating, waiting and loading, per group. What no timeline shows, the round trips that hand a
  batch from the actors through the buffer to the learner and the new version back, is one per-step handoff
  latency, fitted so the simulation of the calibration run(s) takes as long as they did (`fit_handoff_s`).
* **Rejection sampling**: the share of generated groups the buffer kept.
* **Response lengths**: every sample the actors sent (roles/actor<i>.json "response_lengths").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from asyncor.actors.refill import RefillRule
from asyncor.configs.schema import ActorsConfig
from asyncor.studies.simulator import Rates, Shape, simulate
from asyncor.runtime.run_dir import RunDir


class CalibrationError(ValueError):
    pass


@dataclass
class Calibration:
    rates: Rates
    learner_ranks: int  # the learner's rate is for this many ranks
    notes: list[str] = field(default_factory=list)
    layouts: dict[int, dict[str, float]] = field(default_factory=dict)  # actor count -> slowdowns, load, sync

    def rates_for(self, actors: int) -> Rates:
        """The rates with the shared-host slowdowns measured for `actors` actors on one host (or, if no
        calibration run had that many, for the nearest count measured)."""
        if not self.layouts:
            return self.rates
        nearest = min(self.layouts, key=lambda k: (abs(k - actors), -k))
        return replace(self.rates, **self.layouts[nearest])


@dataclass
class Measured:
    steps: int
    steady_wall_s: float  # from the end of the first learner step to the end of the last
    steady_idle_frac: float  # the learner's waiting for batches over that span
    staleness_mean: float


def _role(run_dir: str, role: str) -> dict:
    path = RunDir(run_dir).role(role)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: {exc} (calibrate from a finished run)") from None


def _intervals(entries) -> np.ndarray:
    a = np.asarray(entries if entries else np.zeros((0, 3)), dtype=float).reshape(-1, 3)
    return a[a[:, 1] > a[:, 0]]


def _union(intervals: np.ndarray) -> np.ndarray:
    """Merged, sorted [start, end] pairs."""
    if not len(intervals):
        return np.zeros((0, 2))
    iv = intervals[np.argsort(intervals[:, 0]), :2]
    merged = [list(iv[0])]
    for s, e in iv[1:]:
        if s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return np.asarray(merged)


def overlap_fraction(intervals: np.ndarray, busy: np.ndarray) -> np.ndarray:
    """For each [start, end] in `intervals`, the share of it covered by the merged `busy` intervals."""
    out = np.zeros(len(intervals))
    if not len(busy) or not len(intervals):
        return out
    starts, ends = busy[:, 0], busy[:, 1]
    for i, (s, e) in enumerate(intervals[:, :2]):
        lo, hi = np.searchsorted(ends, s, "right"), np.searchsorted(starts, e, "left")
        if hi > lo:
            covered = np.minimum(ends[lo:hi], e) - np.maximum(starts[lo:hi], s)
            out[i] = covered.clip(min=0).sum() / (e - s)
    return out


def _fold_empty(intervals: np.ndarray, overlaps: list[np.ndarray]):
    """(seconds, tokens, overlaps) of the intervals with tokens; a step without tokens (prompts' prefill only)
    costs time too: its time goes to the next step with tokens."""
    keep = intervals[:, 2] > 0
    if not keep.any():
        raise CalibrationError("no interval with tokens to fit a rate on")
    duration = intervals[:, 1] - intervals[:, 0]
    carried = np.cumsum(np.where(keep, 0.0, duration))
    before = np.concatenate([[0.0], carried[keep][:-1]])
    return duration[keep] + carried[keep] - before, intervals[keep, 2], [f[keep] for f in overlaps]


def _slowdowns(seconds: np.ndarray, base: np.ndarray, fs: list[np.ndarray]) -> list[float]:
    """Least squares seconds / base - 1 = Σ_k a_k · f_k (weighted by base), a_k >= 0; a slowdown the data
    cannot show (no overlap) or that fits negative is 0 and the rest refitted."""
    active = [k for k, f in enumerate(fs) if f.max(initial=0.0) > 0.05]
    out = [0.0] * len(fs)
    w = np.sqrt(base)
    while active:
        X = np.column_stack([fs[k] for k in active])
        coef, *_ = np.linalg.lstsq(X * w[:, None], (seconds / base - 1.0) * w, rcond=None)
        negative = [k for k, c in zip(active, coef) if c < 0]
        if not negative:
            for k, c in zip(active, coef):
                out[k] = float(c)
            break
        active = [k for k in active if k not in negative]
    return out


def fit_engine(intervals: np.ndarray, overlaps: list[np.ndarray]) -> tuple[float, float, list[float]]:
    """An engine's decoding steps: seconds = (step_s + tokens / rate) · (1 + Σ_k a_k · f_k), where a step's
    tokens are its running sequences (one token each). step_s and rate from the steps that overlapped nothing
    (least squares), then the slowdowns from all: (step_s, rate, [a_k])."""
    seconds, tokens, fs = _fold_empty(intervals, overlaps)
    alone = np.all([f < 0.05 for f in fs], axis=0) if fs else np.ones(len(tokens), bool)
    sel = alone if alone.any() else np.ones(len(tokens), bool)
    c0, c1 = 0.0, float(seconds[sel].sum() / tokens[sel].sum())  # a pure token rate, unless batch sizes vary:
    if sel.sum() >= 10 and np.ptp(tokens[sel]) > 0:
        (b0, b1), *_ = np.linalg.lstsq(np.column_stack([np.ones(sel.sum()), tokens[sel]]), seconds[sel], rcond=None)
        if b0 >= 0 and b1 > 0:
            c0, c1 = float(b0), float(b1)
    return float(c0), float(1.0 / c1), _slowdowns(seconds, c0 + c1 * tokens, fs)


def fit_rate(intervals: np.ndarray, overlaps: list[np.ndarray]) -> tuple[float, list[float]]:
    """The learner's steps: least squares seconds = tokens · (1 + Σ_k c_k · f_k) / rate, each step weighted
    1 / tokens (so without overlap the rate is a ratio of totals, as the simulator's fixed-rate learner
    needs): (rate, [c_k]).
    A slowdown the data cannot show (no overlap) or that fits negative is 0, and the rest refitted."""
    seconds, tokens, fs = _fold_empty(intervals, overlaps)
    active = [k for k, f in enumerate(fs) if f.max(initial=0.0) > 0.05]
    w = 1.0 / np.sqrt(tokens)  # weights 1/tokens: without overlap the rate is Σ tokens / Σ seconds exactly
    while True:
        X = np.column_stack([tokens] + [tokens * fs[k] for k in active])
        coef, *_ = np.linalg.lstsq(X * w[:, None], seconds * w, rcond=None)
        negative = [k for k, c in zip(active, coef[1:]) if c < 0]
        if not negative or coef[0] <= 0:
            break
        active = [k for k in active if k not in negative]
    if coef[0] <= 0:  # the overlap terms swallowed everything: fall back to the plain mean rate
        return float(tokens.sum() / seconds.sum()), [0.0] * len(overlaps)
    slowdowns = [0.0] * len(overlaps)
    for k, c in zip(active, coef[1:]):
        slowdowns[k] = float(max(c, 0.0) / coef[0])
    return float(1.0 / coef[0]), slowdowns


def _learner_records(run) -> list[dict]:
    return sorted((r for r in run.records if r.get("role") == "learner" and isinstance(r.get("ts"), (int, float))
                   and isinstance(r.get("learner/wait_for_batch_s"), (int, float))), key=lambda r: r["step"])


@dataclass
class _RunRoles:
    learner: dict
    buffer: dict
    actors: list[dict]


def _roles(run) -> _RunRoles:
    learner, buffer = _role(run.path, "learner"), _role(run.path, "buffer")
    actors = [_role(run.path, f"actor{i}") for i in range(int(run.config.get("actors.count", 1)))]
    if "timeline" not in learner or any("timeline" not in a for a in actors):
        raise CalibrationError(f"{run.path}: the roles recorded no timelines (a run from before the ratio "
                               "advisor); run it again or use `launch.py advise --calibrate`")
    return _RunRoles(learner, buffer, actors)


def _overlaps(r: _RunRoles) -> tuple[list, list]:
    """One run's learner steps with their actor overlap, and its engine steps with their overlaps: ([intervals,
    f_any_actor], [intervals, f_learner, f_other_actors, f_learner_and_other_actor])."""
    train = _intervals(r.learner["timeline"].get("training"))
    gens = [_intervals(a["timeline"].get("generating")) for a in r.actors]
    any_actor = _union(np.concatenate(gens))
    learner_busy = _union(train)
    f_l, f_a, f_both = [], [], []
    for i, g in enumerate(gens):
        others = [_union(o) for j, o in enumerate(gens) if j != i]
        f_l.append(overlap_fraction(g, learner_busy))
        f_a.append(sum((overlap_fraction(g, o) for o in others), np.zeros(len(g))))
        f_both.append(sum((overlap_fraction(g, _intersect(learner_busy, o)) for o in others), np.zeros(len(g))))
    return ([train, overlap_fraction(train, any_actor)],
            [np.concatenate(gens), np.concatenate(f_l), np.concatenate(f_a), np.concatenate(f_both)])


def _intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection of two merged interval lists."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i, 0], b[j, 0]), min(a[i, 1], b[j, 1])
        if hi > lo:
            out.append([lo, hi])
        if a[i, 1] < b[j, 1]:
            i += 1
        else:
            j += 1
    return np.asarray(out).reshape(-1, 2)


SLOWDOWNS = ("actor_slowdown_learner", "actor_slowdown_actor", "actor_slowdown_both", "learner_slowdown_actor")


def calibrate(runs, fit_handoff: bool = True, on_simulated: Callable[[], None] | None = None) -> Calibration:
    """Rates from one or more finished runs (studies/runs.py RunData) of the same model and task: timelines
    pooled, overheads averaged, then the per-step handoff latency fitted (see `fit_handoff_s`).

    How much roles slow each other on a shared host depends on how they are laid out on its cores (one actor
    beside a pinned learner, or two actors and a learner on two cores), so the slowdowns are fitted per
    actor count (`Calibration.layouts`) while the rates alone are shared by all runs. `on_simulated` is called
    after each simulation of the handoff fit (the slow part; at most `handoff_simulations`), for progress."""
    runs = runs if isinstance(runs, list) else [runs]
    roles = [_roles(run) for run in runs]
    notes: list[str] = []
    learner_parts, actor_parts = zip(*(_overlaps(r) for r in roles))
    counts_of = [len(r.actors) for r in roles]
    layouts = sorted(set(counts_of))

    def per_layout(parts, column: int) -> list[np.ndarray]:
        """Feature `column` of every run, one feature per layout (zero in the other layouts' rows)."""
        return [np.concatenate([p[column] if n == k else np.zeros(len(p[0])) for p, n in zip(parts, counts_of)])
                for k in layouts]

    learner_rate, l_a = fit_rate(np.concatenate([p[0] for p in learner_parts]), per_layout(learner_parts, 1))
    actor_features = [f for column in (1, 2, 3) for f in per_layout(actor_parts, column)]
    gen_step_s, gen_rate, coefs = fit_engine(np.concatenate([p[0] for p in actor_parts]), actor_features)
    n = len(layouts)
    a_l, a_a, a_both = coefs[:n], coefs[n:2 * n], coefs[2 * n:]
    layout_slowdowns = {k: dict(zip(SLOWDOWNS, (a_l[i], a_a[i], a_both[i], l_a[i]))) for i, k in enumerate(layouts)}
    for k in layouts:  # loading and publishing contend on a shared host as well
        loads = [a.get("load_s_mean", 0.0) for r in roles if len(r.actors) == k for a in r.actors]
        layout_slowdowns[k]["load_s"] = float(np.mean(loads))
        layout_slowdowns[k]["sync_s"] = float(np.mean([r.learner.get("broadcast_s_mean", 0.0) for r in roles
                                                       if len(r.actors) == k]))
    for i, k in enumerate(layouts):
        if not (per_layout(actor_parts, 1)[i] > 0.05).any():
            notes.append(f"{k} actor(s): the actors never generated while the learner trained (buffer.max_staleness "
                         "= 0?): the slowdown between them on a shared host could not be measured, taken as 0")
        if k > 1 and not (per_layout(actor_parts, 2)[i] > 0.05).any():
            notes.append(f"{k} actors: they never generated at the same time: their mutual slowdown is taken as 0")

    steps = sum(max(int(r.learner.get("steps", 0)) - int(r.learner.get("resumed_from_step") or 0), 1)
                for r in roles)
    step_overhead = sum(r.learner.get("time", {}).get("reporting_version", 0.0)
                        + r.learner.get("time", {}).get("other", 0.0) for r in roles) / steps
    actors = [a for r in roles for a in r.actors]
    groups = sum(int(a.get("groups", 0)) for a in actors)
    actor_other = sum(a.get("time", {}).get("other", 0.0) + a.get("time", {}).get("waiting_for_outbox", 0.0)
                      for a in actors)
    group_overhead = actor_other / groups if groups else 0.0
    rejected = sum(int(v) for r in roles for v in r.buffer.get("rejection_sampling", {}).values())
    keep = 1.0 - rejected / groups if groups else 1.0
    if keep <= 0:
        raise CalibrationError("every generated group was rejected (all samples equal); nothing to calibrate "
                               "the learner's batches on")
    counts: dict[int, int] = {}
    for a in actors:
        for k, v in a.get("response_lengths", {}).items():
            counts[int(k)] = counts.get(int(k), 0) + int(v)
    counts = {k: v for k, v in counts.items() if k >= 1 and v > 0}
    if not counts:
        raise CalibrationError("the runs recorded no response lengths")
    lengths = sorted(counts)
    rates = Rates(gen_tokens_per_s=gen_rate, gen_step_s=gen_step_s, learner_tokens_per_s=learner_rate,
                  step_overhead_s=step_overhead,
                  group_overhead_s=group_overhead, keep_frac=keep, lengths=lengths,
                  length_counts=[counts[k] for k in lengths], **layout_slowdowns[layouts[-1]])  # sync, load too
    ranks = {int(r.learner.get("ranks", 1)) for r in roles}
    if len(ranks) > 1:
        raise CalibrationError(f"the calibration runs have different learner.ranks {sorted(ranks)}: give runs of "
                               "one learner size")
    cal = Calibration(rates, ranks.pop(), notes, layout_slowdowns)
    if fit_handoff:
        cal.rates = replace(rates, handoff_s=fit_handoff_s(cal, runs, on_simulated=on_simulated))
    return cal


HANDOFF_BISECTIONS = 20


def handoff_simulations(runs: int, seeds: int = 2) -> int:
    """The most simulations `fit_handoff_s` runs for `runs` calibration runs: both ends, then each bisection."""
    return (2 + HANDOFF_BISECTIONS) * runs * seeds


def fit_handoff_s(cal: Calibration, runs, seeds: int = 2, on_simulated: Callable[[], None] | None = None) -> float:
    """The per-step latency of handing a batch from the actors through the buffer to the learner and the new
    version back (message round trips, parsing, grant hold times: nothing a role's timeline shows), fitted so
    the simulation of the calibration runs' own shapes takes as long as they did: the smallest h in
    [0, 2 s] (bisection) with simulated >= measured steady wall time, summed over the runs."""
    seen = [measured(run) for run in runs]
    target = sum(m.steady_wall_s for m in seen)
    shapes = [shape_of(run.config, steps=m.steps, shared=shared_host(run)) for run, m in zip(runs, seen)]

    def wall(h: float) -> float:
        total = 0.0
        for shape in shapes:
            rates = replace(cal.rates_for(shape.actors), handoff_s=h)
            walls = []
            for s in range(seeds):
                walls.append(simulate(replace(shape, seed=s), rates).steady_wall_s)
                if on_simulated is not None:
                    on_simulated()
            total += sum(walls) / seeds
        return total

    lo, hi = 0.0, 2.0
    if wall(lo) >= target:
        cal.notes.append(f"handoff latency: 0 s (the simulation without it already takes {wall(lo):.1f} s for "
                         f"the calibration runs' measured {target:.1f} s)")
        return 0.0
    if wall(hi) < target:
        cal.notes.append(f"handoff latency capped at {hi} s per step: the calibration runs took {target:.1f} s, "
                         f"more than the simulation explains ({wall(hi):.1f} s); look for a stalled role")
        return hi
    for _ in range(HANDOFF_BISECTIONS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if wall(mid) < target else (lo, mid)
    cal.notes.append(f"handoff latency {hi * 1000:.0f} ms per step, fitted to the calibration runs' "
                     f"{target:.1f} s of steady-state wall time")
    return hi


def shared_host(run) -> bool:
    """Every role of the run on one host (the local launcher, or one node of a cluster)."""
    cluster = run.summary.get("cluster", {})
    return int(cluster.get("nodes", 1)) <= 1


_REFILL_FIELDS = ("update_mode", "prompts_per_chunk", "inflight_sequences", "group_size")  # what the rule reads


def _refill_rule(config: dict) -> tuple[RefillRule, int]:
    """The refill rule (actors/refill.py) a (flattened) run config's actors ran, and its first stage's group
    size (the simulator's)."""
    try:  # only the fields the rule reads: the schema's defaults and checks, whatever else config.json holds
        actors = ActorsConfig(**{f: config[f"actors.{f}"] for f in _REFILL_FIELDS if f"actors.{f}" in config})
    except ValueError as exc:
        raise CalibrationError(f"the run's [actors] section: {exc}") from None
    # The largest group over the stages sizes the actors' default engine (configs/stages.py max_over_stages).
    stages = config.get("algo.stages") or []
    largest = max([actors.group_size] + [int(stage.get("group_size") or 0) for stage in stages])
    return RefillRule.from_config(actors, largest), actors.group_size


def shape_of(config: dict, steps: int | None = None, actors: int | None = None, shared: bool = False,
             seed: int = 0) -> Shape:
    """The simulator's shape for a (flattened) run config: the prompts its actors' rule runs at once."""
    rule, group = _refill_rule(config)
    # An engine smaller than one group would never ask for prompts; simulated as running one.
    chunk = max(rule.prompts_at_once(group), 1)
    return Shape(actors=actors or int(config.get("actors.count", 1)),
                 max_staleness=int(config.get("buffer.max_staleness", 0)),
                 prompts_per_step=int(config.get("learner.prompts_per_step", 64)), group_size=group,
                 prompts_per_chunk=chunk, steps=steps or int(config.get("learner.steps", 100)),
                 update_mode=rule.update_mode, shared_host=shared, seed=seed)


def measured(run) -> Measured:
    """What a finished run did, in the simulator's steady-state terms (from its learner metrics)."""
    records = _learner_records(run)
    if len(records) < 3:
        raise CalibrationError(f"{run.path}: fewer than 3 learner steps in metrics.jsonl")
    span = records[-1]["ts"] - records[0]["ts"]
    waits = sum(r["learner/wait_for_batch_s"] for r in records[1:])
    return Measured(steps=len(records), steady_wall_s=span, steady_idle_frac=waits / span if span > 0 else 0.0,
                    staleness_mean=float(run.summary.get("staleness", {}).get("mean", 0.0)))
