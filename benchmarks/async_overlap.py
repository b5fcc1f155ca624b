"""How much of the possible overlap async training gets: eta = 0 vs eta = 2 of the same run, side by side.

    python benchmarks/async_overlap.py                   # tiny default, 180 steps, evaluations off
    python benchmarks/async_overlap.py --steps 60 --set actors.count=2

Runs `launch.py run` twice with the same config and seeds, `buffer.max_staleness` 0 (synchronous: the
learner and the actors take turns) and 2 (asynchronous), and reads each run's time budget from summary.json
(telemetry/time_budget.py). From the synchronous run's busy times, T_train (learner training + broadcasting)
and T_gen (actor generating + loading weights; scoring and sending run beside them on the actor's outbox
thread), the best async can do is max(T_gen, T_train)
against T_gen + T_train, so the ideal speed-up is (T_gen + T_train) / max(T_gen, T_train). It prints both
runs' budgets, the measured speed-up (RL wall time, eta = 0 over eta = 2) and its share of the ideal. It also
prints the contention (how much longer each side's busy time got beside the other) and how much of the eta = 2
wall time the slower side was busy: with full overlap, 100 %.
On a 2-core machine with one actor (the default) the actor's engine binds its OpenMP thread to core 0 and
the learner, one thread, is pinned to core 1 (runtime/cores.py); they still share memory bandwidth and the
buffer's process.
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

LEARNER_BUSY = ("training", "broadcasting")
ACTOR_BUSY = ("generating", "loading_weights")  # scoring runs beside them, on the outbox thread


def run(eta: int, args, out: str) -> dict:
    name = f"overlap_eta{eta}"
    cmd = [sys.executable, str(ROOT / "launch.py"), "run", "--set", f"run.name={name}", "--set",
           f"run.output_dir={out}", "--set", f"buffer.max_staleness={eta}", "--set", f"learner.steps={args.steps}",
           "--set", "eval.before_and_after=false", "--set", "eval.every_steps=0"]
    for override in args.set:
        cmd += ["--set", override]
    print(f"running eta = {eta}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, name, "summary.json")) as f:
        return json.load(f)


def busy(times: dict, activities) -> float:
    return sum(times.get(a, 0.0) for a in activities)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=180)
    parser.add_argument("--set", action="append", default=[], help="extra config override (repeatable)")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="asyncor-overlap-")
    runs = {eta: run(eta, args, out) for eta in (0, 2)}

    print("\n| eta | RL wall s | learner training+broadcast s | learner waiting for batch s | "
          "actor generating+loading s | actor waiting for grant s | actor waiting for weights s |")
    print("|---|---|---|---|---|---|---|")
    for eta, s in runs.items():
        lt, actors = s["time"]["learner"], s["time"]["actors"]
        at = {k: sum(a.get(k, 0.0) for a in actors) / len(actors) for k in {k for a in actors for k in a}}
        print(f"| {eta} | {s['wall_s']:.1f} | {busy(lt, LEARNER_BUSY):.1f} | {lt.get('waiting_for_batch', 0):.1f} | "
              f"{busy(at, ACTOR_BUSY):.1f} | {at.get('waiting_for_grant', 0):.1f} | "
              f"{at.get('waiting_for_weights', 0):.1f} |")
    sync = runs[0]["time"]
    t_train = busy(sync["learner"], LEARNER_BUSY)
    t_gen = max(busy(a, ACTOR_BUSY) for a in sync["actors"])  # the slowest actor bounds a step
    ideal = (t_gen + t_train) / max(t_gen, t_train)
    speedup = runs[0]["wall_s"] / runs[2]["wall_s"]
    print(f"\nT_train {t_train:.1f} s, T_gen {t_gen:.1f} s (eta = 0 busy times): ideal speed-up {ideal:.2f}x")
    print(f"measured speed-up {speedup:.2f}x = {speedup / ideal:.0%} of the ideal")
    # The ideal assumes each side runs as fast beside the other as alone. Where they share cores it does not:
    # the same work's busy time, eta = 2 over eta = 0, is the contention factor.
    overlapped = runs[2]["time"]
    t_gen2 = max(busy(a, ACTOR_BUSY) for a in overlapped["actors"])
    t_train2 = busy(overlapped["learner"], LEARNER_BUSY)
    print(f"contention: actor busy {t_gen2 / t_gen:.2f}x, learner busy {t_train2 / t_train:.2f}x its eta = 0 time "
          "for about the same work")
    wall2 = runs[2]["wall_s"]
    slower, t_slow = ("actor", t_gen2) if t_gen2 >= t_train2 else ("learner", t_train2)
    print(f"eta = 2: the slower side ({slower}) was busy {t_slow:.1f} s = {t_slow / wall2:.0%} of the RL wall time; "
          f"at these contended busy times the best async wall is {t_slow:.1f} s, "
          f"a speed-up of {runs[0]['wall_s'] / t_slow:.2f}x (measured {speedup / (runs[0]['wall_s'] / t_slow):.0%} of it)")
    print(f"(runs in {out})")


if __name__ == "__main__":
    main()
