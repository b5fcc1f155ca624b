"""What the code sandbox's jail costs per run (tasks/code_sandbox.py), side by side in one run.

    python benchmarks/sandbox.py [--runs 40] [--baseline OTHER_CHECKOUT/tasks/code_sandbox.py]

Runs the same programs through the jail (root: namespaces, private tmpfs root, cgroup, seccomp filter, uid
lease, stdio pipes) and through the plain fallback (own session and rlimits only), interleaved so that the
machine's load falls on both alike. Prints the median and 90th-percentile wall time per run and the ratio.
`--baseline` adds another version's jail to the interleaving (its code_sandbox.py, loaded from that file with
its own sandbox_jail.py beside it; it must import only the standard library, as every version so far does):
the way to measure what a change to the jail costs on a loaded machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asyncor.tasks.code_sandbox import Limits, Sandbox, jail_available  # noqa: E402

PROGRAMS = {
    "print": "print(3)",
    "stdin sum": "import sys\nprint(sum(map(int, sys.stdin.read().split())))",
    "import json+re": "import json, re\nprint(json.dumps(re.findall(r'\\d', '1a2b3')))",
}


def baseline_sandbox(path: str):
    """A jailed Sandbox of the code_sandbox.py at `path` (another checkout)."""
    spec = importlib.util.spec_from_file_location("baseline_code_sandbox", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.Sandbox(9, module.Limits())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--baseline", help="another checkout's tasks/code_sandbox.py, measured beside this one")
    args = parser.parse_args()
    if not jail_available():
        sys.exit("the jail needs root and Linux namespaces")
    boxes = {"plain": Sandbox(8, Limits(), jail=False), "jail": Sandbox(7, Limits())}
    if args.baseline:
        boxes["baseline jail"] = baseline_sandbox(args.baseline)
    kinds = list(boxes)
    print("| program | " + " | ".join(f"{k} median ms" for k in kinds) + " | " +
          " | ".join(f"{k} p90 ms" for k in kinds) + " | jail / plain |")
    print("|---" * (2 * len(kinds) + 2) + "|")
    for name, code in PROGRAMS.items():
        times = {kind: [] for kind in kinds}
        for _ in range(args.runs):
            for kind, box in boxes.items():
                start = time.perf_counter()
                result = box.run(["/usr/bin/python3", "-I", "p.py"], {"p.py": code}, b"1 2 3\n")
                times[kind].append(time.perf_counter() - start)
                assert result.ok, (kind, result)
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        p90 = {k: statistics.quantiles(v, n=10)[-1] * 1000 for k, v in times.items()}
        print(f"| {name} | " + " | ".join(f"{med[k]:.0f}" for k in kinds) + " | " +
              " | ".join(f"{p90[k]:.0f}" for k in kinds) + f" | {med['jail'] / med['plain']:.2f} |")


if __name__ == "__main__":
    main()
