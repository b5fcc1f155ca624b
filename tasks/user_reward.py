"""A user's reward function, named by import path: `task.reward = "package.module:function"` (docs/rewards.md).

The contract, as the function sees it:

    def my_reward(problem: dict, response: str, metadata: dict) -> float | tuple[float, dict]

* `problem`: {"id": the problem's stable id, "prompt": the prompt as text (what the model read, its chat
  template included, special tokens removed), "reference": the task's reference (an answer string, a code
  problem's tests, or whatever a custom task gave, docs/custom_tasks.md)};
* `response`: the sampled answer as text (special tokens removed; for a multi-turn episode, its last turn);
* `metadata`: {"kind": the problem's built-in scoring kind ("arithmetic" | "math" | "code" | "custom"),
  "phase": "train" | "eval"}.

It returns a finite number, or (number, details) where details is a dict: its finite numbers (16 at most) are
averaged per scoring call into the actor's metrics as `actor/reward_detail/<key>`; the rest is dropped. It runs
in the verifier pool's worker processes (tasks/verifier_pool.py), one sample at a time, under the pool's
per-sample deadline (`actors.verifier_deadline_s`): a function that hangs is killed at it, one that crashes its
process is replaced. Whatever goes wrong scores 0.0 with a counted reason, never an
exception out of here: "import" (the path does not import, or names no callable), "error" (it raised),
"not_a_number" (it returned something that is not a number, a bool included), "nan" (NaN or infinite);
the pool adds "timeout" and "crash".

Producer: the verifier worker (`call`); consumer: the pool, which counts the reasons. Nothing blocks here
beyond the user's function itself, which the pool's deadline bounds from outside.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

from asyncor.tasks.import_path import ImportPathError, load_callable

REASONS = ("import", "error", "not_a_number", "nan", "timeout", "crash")


RewardImportError = ImportPathError  # `task.reward` names nothing callable


def load(path: str) -> Callable:
    """The function at "package.module:function"; RewardImportError with the reason otherwise."""
    return load_callable(path, "task.reward", "package.module:function")


def check(result) -> tuple[float, str | None, dict | None]:
    """(reward, failure reason or None, details or None) of what the user's function returned."""
    details = None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict):
        result, details = result
    if isinstance(result, bool) or not isinstance(result, numbers.Real):
        return 0.0, "not_a_number", None
    value = float(result)
    if not math.isfinite(value):
        return 0.0, "nan", None
    return value, None, details


def call(fn: Callable, problem: dict, response: str, metadata: dict) -> tuple[float, str | None, dict | None]:
    """Call the user's function once: (reward, failure reason or None, details or None)."""
    try:
        result = fn(problem, response, metadata)
    except Exception:  # noqa: BLE001 - the user's exception is a failed sample, counted, never a dead worker
        return 0.0, "error", None
    return check(result)
