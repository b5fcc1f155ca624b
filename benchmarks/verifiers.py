"""Verifier throughput through the actors' pool (tasks/verifier_pool.py), on the project's sample data.

    python benchmarks/verifiers.py                        # pools of 1 and 2 workers, the data 8 times
    python benchmarks/verifiers.py --workers 1 2 4 --repeat 4

Prints samples/s for math answers (math-verify) and for programs (sandboxed
runs against every test of tests/data/code.jsonl), correct and wrong mixed.
Measured side by side in one run; the ratio between pool sizes matters more
than the absolute figures on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asyncor.tasks.verifier_pool import VerifierJob, PoolSettings, VerifierPool  # noqa: E402


def jobs(repeat: int) -> dict[str, list[VerifierJob]]:
    math_rows = [json.loads(x) for x in (ROOT / "tests/data/math.jsonl").read_text().splitlines()]
    code_rows = [json.loads(x) for x in (ROOT / "tests/data/code.jsonl").read_text().splitlines()]
    math = [VerifierJob("math", f"<think>...</think> {a}", r["answer"]) for r in math_rows for a in r["equivalent"] + r["wrong"]]
    code = [VerifierJob("code", f"<think>...</think>\n```python\n{r[k]}\n```", r["tests"])
            for r in code_rows for k in ("solution", "wrong_solution")]
    return {"math": math * repeat, "code": code * repeat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=8)
    args = parser.parse_args()
    work = jobs(args.repeat)
    print(f"{'workers':>7} {'kind':>5} {'samples':>8} {'seconds':>8} {'samples/s':>10}")
    for workers in args.workers:
        with VerifierPool(PoolSettings(workers=workers)) as pool:
            pool.score(work["math"][:2])  # warm-up: imports in every worker
            for kind, batch in work.items():
                start = time.perf_counter()
                pool.score(batch)
                seconds = time.perf_counter() - start
                print(f"{workers:>7} {kind:>5} {len(batch):>8} {seconds:>8.2f} {len(batch) / seconds:>10.1f}")


if __name__ == "__main__":
    main()
