"""Is the ratio advisor's simulator right on this machine? Predicted against measured, eta {0, 2} x actors {1, 2}.

    python benchmarks/advisor.py                      # tiny default; 60-step calibration runs, 120-step checks
    python benchmarks/advisor.py --calibrate-from cal-eta0-actors1 cal-eta2-actors1 cal-eta2-actors2   # fewer
    python benchmarks/advisor.py --check-steps 60 --out /tmp/advisor

1. Four calibration runs (seed 100, 60 steps, evaluations off): each host layout (one actor beside a pinned
   learner; two actors and the learner on the two cores) at eta = 0 (the roles take turns: the engine's step
   cost alone, and the two actors beside each other) and at eta = 2 (every role overlaps every other: the
   slowdowns of sharing this host's two cores).
2. A check sweep (seed 0, evaluations off): buffer.max_staleness in {0, 2} x actors.count in {1, 2}.
3. `launch.py advise --from <the four calibration runs, or --calibrate-from's> --check <the sweep> --nodes 4
   --gpus-per-node 8 --out <out>/advice.md`: every check run's own shape simulated with the calibrated rates,
   and the table of predicted against measured steady-state wall time (end of the first learner step to the
   end of the last) and learner idle fraction.

Every run is a real `launch.py run`; finished runs are kept and reused when the command runs again with the
same --out (delete the directory to measure afresh).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["eval.before_and_after=false", "eval.every_steps=0", "checkpoint.every_steps=0"]


def launch(*args: str) -> None:
    code = subprocess.call([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT)
    if code:
        sys.exit(f"launch.py {args[0]} failed (exit {code})")


def sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration-steps", type=int, default=60)
    parser.add_argument("--check-steps", type=int, default=120)
    parser.add_argument("--out", default=str(ROOT / "runs" / "advisor-validation"))
    parser.add_argument("--set", action="append", default=[], help="override for every run (KEY=VALUE)")
    parser.add_argument("--calibrate-from", nargs="+", default=None, metavar="NAME",
                        help="advise from only these calibration runs (all four are run): how well it predicts "
                             "a layout and eta it was not calibrated on")
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    cal_dirs = []
    for name, eta, actors in (("cal-eta0-actors1", 0, 1), ("cal-eta2-actors1", 2, 1), ("cal-eta0-actors2", 0, 2),
                              ("cal-eta2-actors2", 2, 2)):
        cal_dirs.append(os.path.join(out, name))
        if os.path.exists(os.path.join(cal_dirs[-1], "summary.json")):
            print(f"{name}: done before", flush=True)
            continue
        launch("run", *sets([*COMMON, *args.set, f"learner.steps={args.calibration_steps}", "run.seed=100",
                             f"buffer.max_staleness={eta}", f"actors.count={actors}", f"run.name={name}",
                             f"run.output_dir={out}", "run.overwrite=true"]))
    launch("sweep", "--name", "check", "--output-dir", out, "--grid", "buffer.max_staleness=0,2",
           "--grid", "actors.count=1,2", *sets([*COMMON, *args.set, f"learner.steps={args.check_steps}"]))
    if args.calibrate_from:
        cal_dirs = [os.path.join(out, name) for name in args.calibrate_from]
    launch("advise", "--from", *cal_dirs, "--check", os.path.join(out, "check"), "--nodes", "4",
           "--gpus-per-node", "8", "--out", os.path.join(out, "advice.md"))


if __name__ == "__main__":
    main()
