"""What the code sandbox's jail costs per run (tasks/code_sandbox.py), side by side in one run.

    python benchmarks/sandbox.py [--runs 40]

Runs the same programs through the jail (root: namespaces, private tmpfs root, cgroup) and through the
plain fallback (own session and rlimits only), interleaved so that the machine's load falls on both alike.
Prints the median and 90th-percentile wall time per run and the ratio.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    if not jail_available():
        sys.exit("the jail needs root and Linux namespaces")
    jailed, plain = Sandbox(7, Limits()), Sandbox(8, Limits())
    plain.jailed, plain.uid = False, None
    print("| program | plain median ms | jail median ms | plain p90 ms | jail p90 ms | jail / plain |")
    print("|---|---|---|---|---|---|")
    for name, code in PROGRAMS.items():
        times = {"plain": [], "jail": []}
        for _ in range(args.runs):
            for kind, box in (("plain", plain), ("jail", jailed)):
                start = time.perf_counter()
                result = box.run(["/usr/bin/python3", "-I", "p.py"], {"p.py": code}, b"1 2 3\n")
                times[kind].append(time.perf_counter() - start)
                assert result.ok, (kind, result)
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        p90 = {k: statistics.quantiles(v, n=10)[-1] * 1000 for k, v in times.items()}
        print(f"| {name} | {med['plain']:.0f} | {med['jail']:.0f} | {p90['plain']:.0f} | {p90['jail']:.0f} | "
              f"{med['jail'] / med['plain']:.2f} |")


if __name__ == "__main__":
    main()
