"""Chunked vs streaming generation with in-flight weight updates, on long-tailed response lengths.

    python benchmarks/generation.py                       # repeat task, 30 steps, both modes
    python benchmarks/generation.py --steps 20 --set actors.inflight_kv=recompute

Runs `launch.py run` once per `actors.update_mode` with the same config and seeds, on the built-in "repeat"
task (tasks/repeat.py: response lengths from a few tokens to ~90, median ~10), evaluations off:
  * "chunk": one vLLM batch of `prompts_per_chunk` prompts at a time; the next grant and new weights wait
    until its longest sequence ends (the engine runs emptier and emptier towards the end of every chunk);
  * "inflight": the engine is refilled as sequences finish and new weights are loaded between decoding steps.
For each it prints the actor's throughput (tokens generated per second of the actor's wall time and per second
of engine stepping), the engine's mean occupancy (running sequences / target, averaged over steps) and its
course over the run, the time from a broadcast's arrival to the first token sampled on those weights, and the
learner's time waiting for batches. The ratio row is inflight over chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = ["task.kind=\"repeat\"", "task.digits=3", "task.max_repeat=30", "task.train_size=3000",
        "actors.max_response_tokens=96"]


def run(mode: str, args, out: str) -> str:
    name = f"generation_{mode}"
    cmd = [sys.executable, str(ROOT / "launch.py"), "run", "--set", f"run.name={name}", "--set",
           f"run.output_dir={out}", "--set", f"actors.update_mode=\"{mode}\"", "--set", f"learner.steps={args.steps}",
           "--set", "eval.before_and_after=false", "--set", "eval.every_steps=0"]
    for override in TASK + args.set:
        cmd += ["--set", override]
    print(f"running {mode}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return os.path.join(out, name)


def read(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(run_dir, "roles", "actor0.json")) as f:
        actor = json.load(f)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    occupancy = [r["actor/occupancy"] for r in records if r.get("actor/occupancy") is not None]
    learner = summary["time"]["learner"]
    return {
        "wall": summary["wall_s"], "actor": actor, "occupancy": occupancy,
        "learner_wait": learner.get("waiting_for_batch", 0.0), "learner_wall": learner["wall"],
    }


def course(values: list[float], parts: int = 5) -> str:
    """Mean of each fifth of the run: how occupancy evolves."""
    if not values:
        return "-"
    size = max(len(values) // parts, 1)
    return " ".join(f"{sum(values[i:i + size]) / len(values[i:i + size]):.2f}" for i in range(0, len(values), size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], help="extra config override (repeatable)")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="asyncor-generation-")
    results = {mode: read(run(mode, args, out)) for mode in ("chunk", "inflight")}

    print("\n| update_mode | RL wall s | actor tok/s (wall) | engine tok/s (stepping) | occupancy mean | "
          "occupancy by fifth of the run | weights -> first token s | learner waiting for batch |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for mode, r in results.items():
        a = r["actor"]
        tok_wall = a["tokens_generated"] / a["wall_s"]
        occ = sum(r["occupancy"]) / len(r["occupancy"]) if r["occupancy"] else 0.0
        rows[mode] = (r["wall"], tok_wall, a["gen_tokens_per_s"], occ, a["first_token_s_mean"], r["learner_wait"])
        print(f"| {mode} | {r['wall']:.0f} | {tok_wall:.0f} | {a['gen_tokens_per_s']:.0f} | {occ:.2f} | "
              f"{course(r['occupancy'])} | {a['first_token_s_mean']:.3f} | "
              f"{r['learner_wait']:.0f} s ({r['learner_wait'] / r['learner_wall']:.0%}) |")
    c, i = rows["chunk"], rows["inflight"]
    print(f"| inflight / chunk | {i[0] / c[0]:.2f}x | {i[1] / c[1]:.2f}x | {i[2] / c[2]:.2f}x | {i[3] / c[3]:.2f}x | | "
          f"{i[4] / c[4] if c[4] else 0:.3f}x | {i[5] / c[5] if c[5] else 0:.2f}x |")
    print(f"\nrun directories: {out}")


if __name__ == "__main__":
    main()
