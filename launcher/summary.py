"""`runs/<name>/summary.json` from the roles' final figures, and its console form."""

from __future__ import annotations

import glob
import json
import os
from asyncor.runtime.run_dir import RunDir


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _without_hists(bias: dict) -> dict:
    """The length-bias figures without their histograms (those stay in roles/buffer.json)."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "hist"} if isinstance(v, dict) else v)
            for k, v in bias.items()}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def build_summary(run_dir: str, num_actors: int, wall_s: float) -> dict:
    files = RunDir(run_dir)
    learner = _load(files.role("learner"))
    buffer = _load(files.role("buffer"))
    actors = [_load(p) for p in sorted(glob.glob(files.role("actor*")))]
    load_times = [a["load_s_mean"] for a in actors if a.get("load_s_mean")]
    summary = {
        "eval": {},
        "learner": {**{k: learner[k] for k in ("steps", "tokens_per_s", "wait_for_batch_frac")},
                    "ranks": learner.get("ranks", 1)},
        "actors": {
            "count": num_actors,
            # Aggregate generation throughput: what the learner is fed with.
            "tokens_per_s": sum(a["tokens_per_s"] for a in actors),
            "tokens": sum(a["tokens"] for a in actors),
            "reported": len(actors),
            # Samples a user reward (task.reward: a function or a server) could not score, by reason: they scored 0.
            "reward_failures": _sum_counts([a.get("reward_failures", {}) for a in actors]),
        },
        "staleness": buffer["staleness"],
        "sync": {
            "broadcast_s_mean": learner["broadcast_s_mean"],
            "load_s_mean": sum(load_times) / len(load_times) if load_times else 0.0,
            "bytes_per_version": learner.get("sync_bytes_per_version", 0),
            "lora": learner.get("lora"),  # [learner.lora] when adapters were trained and sent, else None
            "merge_s_mean": _mean([a["merge_s_mean"] for a in actors if a.get("merge_s_mean")]),
            "adapters_refused": sum(a.get("adapters_refused", 0) for a in actors),
            # Membership of the broadcast group (sync/broadcaster.py): rebuilt groups, failed syncs, dropped actors.
            **learner.get("sync", {}),
        },
        "rejected_messages": buffer.get("rejected", {}),
        # Rejection sampling (all-equal groups dropped) and online filtering (mastered prompts removed).
        "filtering": {**buffer.get("rejection_sampling", {}), "online_filtered": buffer.get("online_filtered", 0)},
        # Every group the buffer accepted: trained once, dropped stale, dropped as all-equal, or still stored.
        "ledger": buffer.get("ledger", {}),
        # Response lengths of the trained and the stale-dropped groups: the length bias of dropping.
        "length_bias": _without_hists(buffer.get("length_bias", {})),
        "wall_s": wall_s,
        # Seconds per activity of each role (telemetry/time_budget.py): who waited for whom.
        "time": {"learner": learner.get("time", {}), "actors": [a.get("time", {}) for a in actors]},
    }
    episodes = episodes_of([a["episodes"] for a in actors if a.get("episodes")])
    if episodes:  # a multi-turn task: turns, environment time, tokens per turn, staleness by turn kind
        summary["episodes"] = {**episodes, "staleness": _without_hists(buffer.get("turn_staleness", {}))}
    summary["eval_curve"] = eval_curve(run_dir)
    before, after = files.role("eval_before"), files.role("eval_after")
    if os.path.exists(before) and os.path.exists(after):
        b, a = _load(before), _load(after)
        summary["eval"] = {"before": b["accuracy"], "after": a["accuracy"], "n": a["n"],
                           "samples_per_problem": a["samples_per_problem"], "temperature": a["temperature"],
                           "greedy_before": b["greedy_accuracy"], "greedy_after": a["greedy_accuracy"]}
    return summary


def episodes_of(per_actor: list[dict]) -> dict:
    """The actors' episode tallies (actors/episodes.py EpisodeStats.summary) together; {} for a single-turn task."""
    n = sum(e["episodes"] for e in per_actor)
    if not n:
        return {}
    turns: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for e in per_actor:
        for k, v in e["turns"].items():
            turns[k] = turns.get(k, 0) + v
        for k, v in e["end_reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    total_turns = sum(int(k) * v for k, v in turns.items())
    steps = sum(e["env_steps"] for e in per_actor)
    policy_tokens = sum(e["tokens_per_turn"] * sum(int(k) * v for k, v in e["turns"].items()) for e in per_actor)
    resumed = [(e["prefix_cached_frac"], e["episodes"]) for e in per_actor]
    return {"episodes": n, "turns_mean": total_turns / n,
            "turns": dict(sorted(turns.items(), key=lambda kv: int(kv[0]))),
            "tokens_per_turn": policy_tokens / total_turns if total_turns else 0.0,
            "env_s": sum(e["env_s"] for e in per_actor), "env_steps": steps,
            "env_s_per_step": sum(e["env_s"] for e in per_actor) / steps if steps else 0.0,
            "prefix_cached_frac": sum(f * k for f, k in resumed) / n,
            "end_reasons": {k: v for k, v in reasons.items() if v}}


def episode_lines(e: dict | None) -> list[str]:
    if not e:
        return []
    s = e.get("staleness", {})
    lines = [f"episodes            {e['episodes']}, {e['turns_mean']:.2f} turns each ({e['turns']}), "
             f"{e['tokens_per_turn']:.1f} policy tokens per turn, environment {e['env_s_per_step'] * 1000:.1f} ms "
             f"per call; ended: " + ", ".join(f"{k} {v}" for k, v in e["end_reasons"].items())]
    if s:
        lines.append("  staleness         " + "; ".join(
            f"{kind}-turn groups mean {v['mean']:.2f}, max {v['max']} ({v['groups']} trained, {v['dropped_stale']} "
            "dropped stale)" for kind, v in s.items()))
    return lines


def ledger_line(ledger: dict | None) -> str:
    if not ledger:
        return "groups              (no ledger)"
    requeued = " + {requeued_at_resume} generated again after resuming".format(**ledger) \
        if ledger.get("requeued_at_resume") else ""
    return ("groups              {accepted} accepted = {trained} trained + {dropped_stale} stale + {dropped_uniform} "
            "all-equal + {still_buffered} left" + requeued + "; {unaccounted} unaccounted, {duplicates_discarded} "
            "duplicates discarded").format(**ledger)


def first_step_ts(run_dir: str, since: float = 0.0) -> float | None:
    """Unix time of the learner's first step logged after `since` (bring-up cost: launch -> first step; a
    resumed run's metrics also hold the steps before it)."""
    from asyncor.telemetry.metrics import read_metrics

    records, _ = read_metrics(RunDir(run_dir).metrics)
    return min((r["ts"] for r in records if r.get("role") == "learner" and r["ts"] >= since), default=None)


def eval_curve(run_dir: str) -> list[dict]:
    """Every held-out evaluation of the run (before, every `eval.every_steps`, after), by policy version."""
    from asyncor.telemetry.metrics import read_metrics

    records, _ = read_metrics(RunDir(run_dir).metrics)
    points = [{"version": r["step"], "accuracy": r["eval/accuracy"], "greedy_accuracy": r["eval/greedy_accuracy"],
               "pass_at_k": r["eval/pass_at_k"]} for r in records if r.get("role") == "eval"]
    return sorted(points, key=lambda p: p["version"])


def human(summary: dict) -> str:
    e, l, a, s, y = summary["eval"], summary["learner"], summary["actors"], summary["staleness"], summary["sync"]
    lines = ["", "== asyncor run summary =="]
    if e:
        lines.append(f"held-out accuracy   {e['before']:.3f} -> {e['after']:.3f}  ({e['after'] - e['before']:+.3f}; "
                     f"avg@{e['samples_per_problem']} at temperature {e['temperature']}, {e['n']} problems)")
        lines.append(f"  greedy            {e['greedy_before']:.3f} -> {e['greedy_after']:.3f}")
    curve = summary.get("eval_curve", [])
    if len(curve) > 2 or (curve and not e):
        lines.append("eval by version     " + ", ".join(f"v{p['version']} {p['accuracy']:.3f}" for p in curve))
    on_ranks = f" on {l['ranks']} ranks" if l.get("ranks", 1) > 1 else ""
    lines += [
        f"learner             {l['steps']} steps{on_ranks}, {l['tokens_per_s']:.0f} tok/s, "
        f"waiting for batches {l['wait_for_batch_frac']:.0%} of the time",
        f"actors              {a['count']} x vLLM, {a['tokens_per_s']:.0f} tok/s in all"
        + (f"; reward failed for {sum(a['reward_failures'].values())} samples ("
           + ", ".join(f"{k} {v}" for k, v in sorted(a["reward_failures"].items())) + ", scored 0)"
           if a.get("reward_failures") else ""),
        f"staleness           mean {s['mean']:.2f}, max {s['max']} (bound {s['max_allowed']}), dropped {s['dropped']}",
        "rejection sampling  {} groups all right, {} all wrong dropped; {} prompts filtered online".format(
            summary.get("filtering", {}).get("solve_all", 0), summary.get("filtering", {}).get("solve_none", 0),
            summary.get("filtering", {}).get("online_filtered", 0)),
        ledger_line(summary.get("ledger")),
        *episode_lines(summary.get("episodes")),
        f"weight sync         broadcast {y['broadcast_s_mean'] * 1000:.1f} ms, load {y['load_s_mean'] * 1000:.1f} ms (means)"
        + (f", {y['bytes_per_version'] / 2**20:.2f} MiB per version" if y.get("bytes_per_version") else "")
        + (f"; LoRA rank {y['lora']['rank']}: merge {y['merge_s_mean'] * 1000:.1f} ms, "
           f"{y['adapters_refused']} adapters refused" if y.get("lora") else "")
        + (f"; group rebuilt {y['regroups'] - 1} times, {y['failed_syncs']} failed syncs"
           if y.get("regroups", 1) > 1 else ""),
        *restart_lines(summary.get("actor_restarts", {})),
        *time_lines(summary.get("time", {})),
        f"wall                {summary['wall_s']:.0f} s of RL"
        + (f"; launch -> first learner step {summary['time_to_first_step_s']:.0f} s"
           if summary.get("time_to_first_step_s") is not None else ""),
    ]
    return "\n".join(lines)


def restart_lines(restarts: dict) -> list[str]:
    events = restarts.get("events", [])
    if not events:
        return []
    return ["restarts            " + ", ".join(f"{e['role']} after exit code {e['returncode']}" for e in events)]


def time_lines(time: dict) -> list[str]:
    """One line per role: its wall time split into activities, largest first."""
    roles = [("learner", time.get("learner", {}))] + [(f"actor{i}", t) for i, t in enumerate(time.get("actors", []))]
    lines = []
    for name, t in roles:
        if not t:
            continue
        parts = sorted(((k, v) for k, v in t.items() if k != "wall" and v >= 0.05), key=lambda kv: -kv[1])
        lines.append(f"time {name:<14} {t['wall']:.0f} s: " + ", ".join(f"{k.replace('_', ' ')} {v:.0f} s"
                                                                       for k, v in parts))
    return lines


def _sum_counts(counts: list[dict]) -> dict:
    total: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total

