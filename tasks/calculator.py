"""The built-in tool task: products the tiny model cannot work out, and a calculator it can call.

`347*86=` -> `29842`. The policy may answer at once, or call the calculator: it writes the call between the
call tags, the environment answers between the observation tags, and the policy writes the answer:

    347*86=  (347*86)  [29842]  29842<eos>
    prompt   policy    env      policy          (configs/calculator.toml: call "(" ")", observation "[" "]")

The warm start (prepare/warm_start.py) shows both ways, `warm_start.tool_fraction` of its examples calling the
tool (`demonstration`), so RL starts from a policy that sometimes calls it and learns when it pays: a
calculator's answer is always right, a guess at a product of two 2-digit numbers rarely is. Scored
exact-answer on the last policy turn (tasks/scoring.py, scoring kind "arithmetic"). Splits: distinct `a*b`,
both operands of exactly `task.digits` digits, deterministic in the seed, train and held-out disjoint.
"""

from __future__ import annotations

import random

from asyncor.configs.schema import TaskConfig
from asyncor.tasks.arithmetic import CHARACTERS, TextProblem

TOOL_CHARACTERS = list("()[]?")  # the tags of configs/calculator.toml, and "?" (the tool unavailable)


def characters() -> list[str]:
    """The tiny tokenizer's characters for this task (prepare/tiny_model.py)."""
    return CHARACTERS + TOOL_CHARACTERS


def make_splits(cfg: TaskConfig, seed: int) -> tuple[list[TextProblem], list[TextProblem]]:
    """(train, heldout): disjoint lists of distinct products, deterministic in `seed`."""
    rng = random.Random(f"calculator-{seed}")
    low, high = 10 ** (cfg.digits - 1), 10**cfg.digits - 1
    n_total = cfg.train_size + cfg.heldout_size
    if n_total > (high - low + 1) ** 2:
        raise ValueError(f"task: {n_total} problems requested but digits={cfg.digits} gives only "
                         f"{(high - low + 1) ** 2} distinct products (raise task.digits)")
    seen: set[tuple[int, int]] = set()
    problems: list[TextProblem] = []
    while len(problems) < n_total:
        key = (rng.randint(low, high), rng.randint(low, high))
        if key in seen:
            continue
        seen.add(key)
        a, b = key
        problems.append(TextProblem(id=len(problems), prompt=f"{a}*{b}=", answer=str(a * b)))
    return problems[: cfg.train_size], problems[cfg.train_size :]


def demonstration(problem: TextProblem, env, use_tool: bool) -> list[tuple[str, bool]]:
    """A warm-start example after the prompt, as (text, trained) segments: the answer at once, or the call, the
    calculator's observation (context, not trained) and the answer. `env`: the [task.env] settings (the tags).
    The answer segment is followed by eos (the caller adds it)."""
    if not use_tool:
        return [(problem.answer, True)]
    call = problem.prompt.rstrip("=")
    return [(f"{env.call_start}{call}{env.call_end}", True),
            (f"{env.observation_start}{problem.answer}{env.observation_end}", False),
            (problem.answer, True)]
