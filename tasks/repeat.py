"""A built-in task with long-tailed response lengths: `37*5=` -> `3737373737`.

The answer is the number `a` written `n` times, so the response length is
`n x digits(a)` plus the end token. `n` is drawn from a log-normal (median 2,
sigma 1) capped at `task.max_repeat`: most answers take a few tokens and a
few take tens, the shape of reasoning lengths that makes one slow sequence
hold up a whole chunk. Small enough for the tiny model on a CPU; the
verifier is exact-answer, as for arithmetic. Used to study generation
scheduling (benchmarks/generation.py), not as a reasoning benchmark.
"""

from __future__ import annotations

import math
import random

from asyncor.configs.schema import TaskConfig
from asyncor.tasks.arithmetic import TextProblem

MEDIAN_REPEAT = 2.0
SIGMA = 1.0


def draw_repeat(rng: random.Random, max_repeat: int) -> int:
    return min(max(1, round(math.exp(rng.gauss(math.log(MEDIAN_REPEAT), SIGMA)))), max_repeat)


def make_splits(cfg: TaskConfig, seed: int) -> tuple[list[TextProblem], list[TextProblem]]:
    """(train, heldout): disjoint lists of distinct problems, deterministic in `seed`."""
    rng = random.Random(f"repeat-{seed}")
    high = 10**cfg.digits - 1
    n_total = cfg.train_size + cfg.heldout_size
    seen: set[tuple[int, int]] = set()
    problems: list[TextProblem] = []
    for _ in range(100 * n_total):  # bounded: a space too small for the request fails, never hangs
        if len(problems) == n_total:
            break
        key = (rng.randint(0, high), draw_repeat(rng, cfg.max_repeat))
        if key in seen:
            continue
        seen.add(key)
        a, n = key
        problems.append(TextProblem(id=len(problems), prompt=f"{a}*{n}=", answer=str(a) * n))
    if len(problems) < n_total:
        raise ValueError(f"task: {n_total} distinct problems requested; digits={cfg.digits} and "
                         f"max_repeat={cfg.max_repeat} give too few (raise task.digits or task.max_repeat)")
    return problems[: cfg.train_size], problems[cfg.train_size :]
