"""The same run through each launch path: this machine, SLURM (salloc) and Ray (two nodes).

    python benchmarks/launch_paths.py [--set KEY=VALUE ...]

Runs `launch.py run` with the default config (configs/tiny.toml) three times, one after another: locally,
under `salloc` with `--cluster slurm` on a real single-node SLURM (slurmctld, slurmd and munged started here
by the tests' fixture, as root), and with `--cluster ray` on a real two-raylet Ray cluster on this host.
Prints one row per path from each run's summary.json: held-out accuracy before -> after, the learner's
steps and waiting share, RL wall time, launch -> first learner step (bring-up cost) and total wall time.
The three share the cached warm start and seed; runs differ by timing (asynchrony) only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def launch(out_dir: str, name: str, prefix: list[str], extra: list[str], overrides: list[str],
           env: dict | None = None) -> dict:
    sets = [a for item in [f"run.output_dir={out_dir}", f"run.name={name}", *overrides] for a in ("--set", item)]
    started = time.time()
    proc = subprocess.run([*prefix, sys.executable, "launch.py", "run", *extra, *sets], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    with open(os.path.join(out_dir, name, "summary.json")) as f:
        summary = json.load(f)
    summary["command_s"] = time.time() - started
    print(f"  {name}: done in {summary['command_s']:.0f} s", flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    args = parser.parse_args()
    from tests.cluster.ray_cluster import ray_available, ray_cluster
    from tests.cluster.slurm_cluster import slurm_available, slurm_cluster

    out = tempfile.mkdtemp(prefix="launch_paths_")
    rows = {"local": launch(out, "local", [], [], args.set)}
    if (why := slurm_available()) is None:
        with slurm_cluster(tempfile.mkdtemp(prefix="slurm_", dir="/tmp")) as slurm_env:
            rows["slurm (salloc)"] = launch(out, "slurm", ["salloc", "--nodes=1"], ["--cluster", "slurm"], args.set,
                                            {**os.environ, **slurm_env})
    else:
        print(f"  slurm: skipped ({why})")
    if (why := ray_available()) is None:
        with ray_cluster(nodes=2) as address:
            rows["ray (2 nodes)"] = launch(out, "ray", [], ["--cluster", "ray", "--address", address], args.set)
    else:
        print(f"  ray: skipped ({why})")
    print("\n| path | held-out avg@4 | greedy | learner waiting | RL wall s | launch -> first step s | total s |")
    print("|---|---|---|---|---|---|---|")
    for path, s in rows.items():
        e = s["eval"]
        print(f"| {path} | {e['before']:.3f} -> {e['after']:.3f} | {e['greedy_before']:.3f} -> {e['greedy_after']:.3f} "
              f"| {s['learner']['wait_for_batch_frac']:.0%} | {s['wall_s']:.0f} | {s['time_to_first_step_s']:.0f} "
              f"| {s['total_wall_s']:.0f} |")
    print(f"\nruns: {out}")


if __name__ == "__main__":
    main()
