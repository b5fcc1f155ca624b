"""The buffer's state: what it counts, what a checkpoint keeps, what it reports at the end.

`Counts` are the figures the other parts add to (ingest, batches, the service's refusals). The ledger says
where every accepted group went: trained, dropped as stale, dropped as all-equal (rejection sampling), still
stored, or given back at a resume; `unaccounted` is 0 unless a group was lost or counted twice.

`state_dict` is what a run resumed at the current version needs (saved in the learner's checkpoint as
buffer_state.json, runtime/run_dir.py); groups not trained yet, stored or still being generated, are not
kept: their prompts go back to the front of the stream, to be generated again by the resumed policy. Each
prompt goes back once, however many of its groups were stored or in flight (a small pool can hold a prompt's
group while the same prompt is granted again), so a resumed grant never names a prompt twice.
`load_state` continues from it under the resumed run's config: the staleness budget's count of consumed
groups is recomputed from the current `learner.prompts_per_step` and `algo.stages` (a resume may change
them), and a state saved over another training set is refused (buffer/prompts.py). `summary` is
roles/buffer.json.

The length bias of dropping stale groups (issue 27): long responses take longer to generate, so they are
older when they arrive and more of them are dropped as stale, which trains the policy on a shorter-than-sampled
distribution. `Counts.len_hist` counts every response of every group handed to the learner ("trained") and of
every group dropped as stale ("dropped"; rejection sampling's all-equal groups are neither) by its length in
tokens: one list per kind indexed by length, so memory is bounded by the longest response, not the run's length.
Both are kept in the checkpoint (a state saved before they existed loads with them empty); `summary` reports them
under "length_bias" with the drop rate of long responses (at or above the p90 length of all counted responses)
against that of shorter ones. Multi-turn tasks: `turns` counts trained groups' staleness and stale drops by turn
kind (a group with an episode of more than one turn, against groups of one-turn episodes), kept in the checkpoint
too and reported under "turn_staleness".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from asyncor.buffer.rejection import GroupTally
from asyncor.configs.stages import groups_through
from asyncor.runtime.run_dir import BUFFER_STATE
from asyncor.wire.envelope import REJECT_REASONS


LENGTH_KINDS = ("trained", "dropped")  # response lengths counted: groups handed to the learner, dropped as stale
TURN_KINDS = ("single", "multi")  # groups whose episodes all took one turn, and groups with a longer one


def turn_kind(group) -> str:
    """"multi" for a group with an episode of more than one turn (its details, actors/outbox.py), else "single"."""
    turns = group.details.get("turns_max", 1)
    return "multi" if isinstance(turns, int) and turns > 1 else "single"


@dataclass
class Counts:
    accepted: int = 0  # groups accepted; each ends trained, dropped stale, dropped uniform, still stored or requeued
    duplicates: int = 0  # resends of groups answered before
    dropped_stale: int = 0
    requeued: int = 0  # groups stored at the checkpoint a run resumed from: given back, generated again
    max_stored: int = 0  # the most groups the store held at once (bounded by buffer.max_groups)
    online_filtered: int = 0  # prompts removed from the pool as mastered
    rejected: dict[str, int] = field(default_factory=lambda: {r: 0 for r in REJECT_REASONS})  # refused messages
    rejected_uniform: dict[str, int] = field(default_factory=lambda: {"solve_all": 0, "solve_none": 0})
    staleness_trained: list[int] = field(default_factory=list)  # one entry per group handed to the learner
    # Responses counted by length in tokens (index = length), of groups trained and of groups dropped as stale.
    len_hist: dict[str, list[int]] = field(default_factory=lambda: {kind: [] for kind in LENGTH_KINDS})
    # Multi-turn tasks: staleness of trained groups (count per staleness) and stale-dropped groups, by turn kind.
    turn_staleness: dict[str, list[int]] = field(default_factory=lambda: {kind: [] for kind in TURN_KINDS})
    turn_dropped: dict[str, int] = field(default_factory=lambda: {kind: 0 for kind in TURN_KINDS})

    def turns(self, groups, ages: list[int] | None) -> None:
        """Count `groups` by turn kind: trained at `ages`, or (None) dropped as stale. Single-turn tasks' groups
        carry no turn details and are left out."""
        for g, age in zip(groups, ages if ages is not None else [None] * len(groups)):
            if "turns_max" not in g.details:
                continue
            kind = turn_kind(g)
            if age is None:
                self.turn_dropped[kind] += 1
                continue
            hist = self.turn_staleness[kind]
            hist.extend([0] * (age + 1 - len(hist)))
            hist[age] += 1

    def uniform(self, kind: str, tally: GroupTally) -> None:
        """An all-equal group dropped by rejection sampling."""
        tally.on_rejected(kind)
        self.rejected_uniform[kind] += 1

    def lengths(self, kind: str, groups) -> None:
        """Count the length of every response of `groups` under `kind` ("trained" or "dropped": stale)."""
        hist = self.len_hist[kind]
        for g in groups:
            for r in g.responses:
                n = len(r.token_ids)
                if n >= len(hist):
                    hist.extend([0] * (n + 1 - len(hist)))
                hist[n] += 1


def length_stats(hist: list[int]) -> dict:
    """Responses, mean, p50, p90, max length of a count-per-length list. A percentile is the smallest length with
    at least that share of the responses at or below it; all 0 when nothing was counted."""
    counts = np.asarray(hist, dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        return {"responses": 0, "mean": 0.0, "p50": 0, "p90": 0, "max": 0, "hist": []}
    cum = np.cumsum(counts)

    def pct(p: int) -> int:  # the first length whose cumulative count reaches p% of n (integers: no rounding)
        return int(np.searchsorted(cum, -(-p * n // 100)))

    return {"responses": n, "mean": float(np.dot(np.arange(len(counts)), counts) / n), "p50": pct(50),
            "p90": pct(90), "max": int(np.flatnonzero(counts)[-1]), "hist": [int(x) for x in counts]}


def length_bias(counts: Counts) -> dict:
    """Trained against stale-dropped response lengths, and the drop rate of long responses (length >= `long_from`,
    the p90 of all counted responses) against that of shorter ones: dropped / (dropped + trained) in each class
    (None when the class is empty). A long rate above the short one: dropping stale groups favours short ones."""
    trained, dropped = counts.len_hist["trained"], counts.len_hist["dropped"]
    size = max(len(trained), len(dropped))
    t = np.zeros(size, np.int64)
    d = np.zeros(size, np.int64)
    t[:len(trained)], d[:len(dropped)] = trained, dropped
    long_from = length_stats((t + d).tolist())["p90"]

    def rate(kept: np.ndarray, gone: np.ndarray) -> float | None:
        total = int(kept.sum() + gone.sum())
        return int(gone.sum()) / total if total else None

    return {"trained": length_stats(trained), "dropped": length_stats(dropped), "long_from": long_from,
            "long_drop_rate": rate(t[long_from:], d[long_from:]), "short_drop_rate": rate(t[:long_from], d[:long_from])}


def turn_staleness(counts: Counts) -> dict:
    """Staleness of trained single-turn against multi-turn groups (a multi-turn task's groups only): an episode with
    tool calls takes longer, so more versions pass while it runs. {} when no group had turn details."""
    out = {}
    for kind in TURN_KINDS:
        hist = np.asarray(counts.turn_staleness[kind], dtype=np.int64)
        n = int(hist.sum())
        out[kind] = {"groups": n, "dropped_stale": counts.turn_dropped[kind],
                     "mean": float(np.dot(np.arange(len(hist)), hist) / n) if n else 0.0,
                     "max": int(np.flatnonzero(hist)[-1]) if n else 0, "hist": [int(x) for x in hist]}
    return out if any(v["groups"] or v["dropped_stale"] for v in out.values()) else {}


def ledger(counts: Counts, stored: int) -> dict:
    """Where every accepted group went. Retried duplicates were never accepted (`duplicates_discarded`)."""
    ends = {"trained": len(counts.staleness_trained), "dropped_stale": counts.dropped_stale,
            "dropped_uniform": sum(counts.rejected_uniform.values()), "still_buffered": stored,
            "requeued_at_resume": counts.requeued}
    return {"accepted": counts.accepted, **ends, "unaccounted": counts.accepted - sum(ends.values()),
            "duplicates_discarded": counts.duplicates}


def state_dict(b) -> dict:
    """`b`: the buffer service (buffer/service.py), whose parts hold the state."""
    c, ages = b.counts, b.counts.staleness_trained
    prompts = b.prompts.state_dict()
    untrained = b.store.prompt_ids() + list(b.admission.granted) + prompts["returned"]
    prompts["returned"] = list(dict.fromkeys(untrained))  # each once, in order: stored, in flight, given back
    return {
        "version": b.budget.version,
        "budget_accepted": b.budget.accepted - len(b.store),  # groups consumed by the steps so far
        "prompts": prompts,
        "online_filter": b.online_filter.state_dict(),
        "online_filtered": c.online_filtered,
        "accepted": c.accepted, "dropped_stale": c.dropped_stale, "duplicates": c.duplicates,
        "requeued": c.requeued + len(b.store),
        "rejected_uniform": dict(c.rejected_uniform),
        "rejected": dict(c.rejected),
        "trained_staleness_hist": np.bincount(ages).tolist() if ages else [],
        **{f"{kind}_len_hist": list(c.len_hist[kind]) for kind in LENGTH_KINDS},
        "turn_staleness": {kind: list(c.turn_staleness[kind]) for kind in TURN_KINDS},
        "turn_dropped": dict(c.turn_dropped),
    }


def load_state(b, checkpoint: str) -> None:
    """Continue from `<checkpoint>/buffer_state.json` (written from `state_dict`); RuntimeError names the file and
    what does not fit."""
    path = os.path.join(checkpoint, BUFFER_STATE)
    c = b.counts
    try:
        with open(path) as f:
            state = json.load(f)
        b.prompts.load_state_dict(state["prompts"])
        b.budget.on_version(int(state["version"]))
        # Groups the steps so far consumed, by this run's batch sizes: the saved count (by the batch sizes the
        # checkpoint was written under) would shut admission for good after a smaller prompts_per_step.
        saved_accepted = int(state["budget_accepted"])
        b.budget.accepted = groups_through(b.config, b.budget.version)
        b.online_filter.load_state_dict(state["online_filter"])
        c.online_filtered = int(state["online_filtered"])
        c.accepted, c.dropped_stale = int(state["accepted"]), int(state["dropped_stale"])
        c.duplicates, c.requeued = int(state["duplicates"]), int(state["requeued"])
        c.rejected_uniform.update({k: int(state["rejected_uniform"][k]) for k in c.rejected_uniform})
        c.rejected.update({k: int(v) for k, v in state["rejected"].items() if k in c.rejected})
        c.staleness_trained = [age for age, n in enumerate(state["trained_staleness_hist"]) for _ in range(int(n))]
        c.len_hist = {kind: load_hist(state.get(f"{kind}_len_hist", []), f"{kind}_len_hist") for kind in LENGTH_KINDS}
        turns = state.get("turn_staleness", {})
        c.turn_staleness = {kind: load_hist(turns.get(kind, []), f"turn_staleness.{kind}") for kind in TURN_KINDS}
        c.turn_dropped = {kind: int(state.get("turn_dropped", {}).get(kind, 0)) for kind in TURN_KINDS}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"cannot resume the buffer from {path}: {type(exc).__name__}: {exc}") from None
    if saved_accepted != b.budget.accepted:
        b.log.info("admission_recomputed", saved_groups_consumed=saved_accepted, groups_consumed=b.budget.accepted,
                   reason="learner.prompts_per_step or algo.stages changed at resume")
    b.log.info("resumed", version=b.budget.version, requeued=len(state["prompts"]["returned"]),
               epoch=b.prompts.epoch, trained=len(c.staleness_trained), capacity=b.budget.capacity())


def load_hist(saved, key: str) -> list[int]:
    """A saved count-per-length list (missing in states saved before it existed: empty)."""
    hist = [int(n) for n in saved]
    if any(n < 0 for n in hist):
        raise ValueError(f"{key} holds a negative count")
    return hist


def summary(b) -> dict:
    c, ages, a = b.counts, b.counts.staleness_trained, b.admission
    eta = b.config.buffer.max_staleness
    return {
        "staleness": {
            "max_allowed": eta,
            "mean": float(np.mean(ages)) if ages else 0.0,
            "max": int(max(ages)) if ages else 0,
            "dropped": c.dropped_stale,
            "hist": np.bincount(ages, minlength=eta + 1).tolist() if ages else [],
        },
        "rejected": {k: v for k, v in c.rejected.items() if v},
        "rejection_sampling": dict(c.rejected_uniform),
        "online_filtered": c.online_filtered,
        "duplicates": c.duplicates,
        "groups_trained": len(ages),
        "max_stored": c.max_stored,
        "ledger": ledger(c, len(b.store)),
        "length_bias": length_bias(c),
        "turn_staleness": turn_staleness(c),
        "actors": a.actor_stats,
        "actor_restarts": {str(i): n for i, n in sorted(a.actor_restarts.items())},
    }
