"""The built-in synthetic arithmetic task: `123+45=` -> `168`.

Train and held-out splits are drawn from one seeded generator and are
disjoint. The verifier is exact-answer: the decoded response, stripped, must
equal the answer string. Pure python: used by the buffer (prompts, through
tasks/task.py), actors (rewards, tasks/scoring.py), prepare/ (the warm start
and the tiny tokenizer's vocabulary) and evaluation alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from asyncor.configs.schema import TaskConfig

# Character vocabulary of the task; the tiny tokenizer is built from it.
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>"]
CHARACTERS = list("0123456789+-*=")


@dataclass(frozen=True)
class TextProblem:
    id: int
    prompt: str
    answer: str


def _solve(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def make_splits(cfg: TaskConfig, seed: int) -> tuple[list[TextProblem], list[TextProblem]]:
    """(train, heldout): disjoint lists of distinct problems, deterministic in `seed`."""
    rng = random.Random(f"arithmetic-{seed}")
    high = 10**cfg.digits - 1
    n_total = cfg.train_size + cfg.heldout_size
    space = (high + 1) ** 2 * len(cfg.operations)
    if n_total > space:
        raise ValueError(f"task: {n_total} problems requested but only {space} distinct ones exist for digits={cfg.digits}")
    seen: set[tuple[int, str, int]] = set()
    problems: list[TextProblem] = []
    while len(problems) < n_total:
        key = (rng.randint(0, high), rng.choice(cfg.operations), rng.randint(0, high))
        if key in seen:
            continue
        seen.add(key)
        a, op, b = key
        problems.append(TextProblem(id=len(problems), prompt=f"{a}{op}{b}=", answer=str(_solve(a, op, b))))
    return problems[: cfg.train_size], problems[cfg.train_size :]


def score(response_text: str, answer: str) -> float:
    """Exact-answer verifier: 1.0 if the response is the answer (surrounding whitespace ignored)."""
    return 1.0 if response_text.strip() == answer else 0.0
