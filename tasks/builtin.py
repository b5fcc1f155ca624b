"""The built-in tasks by `task.kind`: the problems every role draws from (buffer prompts, warm start,
held-out evaluation). All are scored exact-answer (scoring kind "arithmetic"); "calculator" is multi-turn
with its tool (tasks/calculator.py)."""

from __future__ import annotations

from asyncor.configs.schema import TaskConfig
from asyncor.tasks.arithmetic import TextProblem


def make_splits(cfg: TaskConfig, seed: int) -> tuple[list[TextProblem], list[TextProblem]]:
    """(train, heldout) of the built-in task; kind = "files" warm-starts on arithmetic, kind = "custom" on the
    user task's demonstrations (its training items with an `answer`; no held-out split)."""
    if cfg.kind == "custom":
        from asyncor.tasks.custom_task import warm_start_problems

        return warm_start_problems(cfg), []
    if cfg.kind == "calculator":
        from asyncor.tasks.calculator import make_splits as calculator_splits

        return calculator_splits(cfg, seed)
    if cfg.kind == "repeat":
        from asyncor.tasks.repeat import make_splits as repeat_splits

        return repeat_splits(cfg, seed)
    from asyncor.tasks.arithmetic import make_splits as arithmetic_splits

    return arithmetic_splits(cfg, seed)
