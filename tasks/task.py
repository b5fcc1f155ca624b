"""The task seam (DESIGN §10): where a run's problems come from and how their answers are scored.

A `Task` hands out `Problem`s, already tokenised the way the model reads them: the training split (the
buffer's prompt stream) and the held-out split (evaluation before, during and after RL). Each problem names
its scoring kind and reference, which the actors' `Scorer` (tasks/scoring.py) needs, so neither the buffer nor
the actors look at `task.kind`:

  BuiltinTask  task.kind = "arithmetic" | "repeat": synthetic text problems (tasks/builtin.py), exact answers
  FileTask     task.kind = "files": math / code problems from local jsonl / parquet files (tasks/dataset.py),
               scored by math-verify and the sandboxed code runner in the verifier pool
  CustomTask   task.kind = "custom": a user's task class by import path (tasks/custom_task.py)

`make_task(config, codec)` picks one by `task.kind`.
"""

from __future__ import annotations

from typing import Protocol

from asyncor.configs.schema import Config
from asyncor.tasks.problem import Problem  # noqa: F401 - part of the task interface, re-exported


class Task(Protocol):
    needs_verifier_pool: bool  # answers are scored in verifier processes (start them before vLLM)
    dropped_long_prompts: int  # training prompts left out as longer than actors.max_prompt_tokens

    def training(self) -> list[Problem]: ...

    def heldout(self, limit: int) -> list[Problem]:
        """The first `limit` held-out problems (the same ones every time)."""


class BuiltinTask:
    """The synthetic tasks: `123+45=` -> `168`, or `37*5=` -> `3737373737`, scored exact-answer."""

    needs_verifier_pool = False
    dropped_long_prompts = 0  # the synthetic prompts are a few tokens

    def __init__(self, config: Config, codec):
        from asyncor.tasks.builtin import make_splits

        self.codec = codec
        self.train, self.held = make_splits(config.task, config.run.seed)

    def _problems(self, problems) -> list[Problem]:
        return [Problem(p.id, self.codec.encode_prompt(p.prompt), "arithmetic", p.answer, "arithmetic")
                for p in problems]

    def training(self) -> list[Problem]:
        return self._problems(self.train)

    def heldout(self, limit: int) -> list[Problem]:
        return self._problems(self.held[:limit])


def file_problems(paths: list[str], codec, model_dir: str, max_prompt_tokens: int, fmt: str = "auto"):
    """(problems, the rows they came from, prompts dropped as longer than `max_prompt_tokens`) of data files."""
    from asyncor.tasks.dataset import load_problems

    rows, ids, dropped = load_problems(paths, codec, model_dir, max_prompt_tokens, fmt)
    return [Problem(r.id, t, r.kind, r.reference, r.data_source) for r, t in zip(rows, ids)], rows, dropped


class FileTask:
    """Math and code problems from local files, in the model's chat template."""

    needs_verifier_pool = True

    def __init__(self, config: Config, codec):
        self.config, self.codec = config, codec
        self.dropped_long_prompts = 0  # training prompts longer than actors.max_prompt_tokens, left out

    def _load(self, paths: list[str]) -> tuple[list[Problem], int]:
        c = self.config
        problems, _, dropped = file_problems(paths, self.codec, c.model.path, c.actors.max_prompt_tokens, c.task.format)
        return problems, dropped

    def training(self) -> list[Problem]:
        problems, self.dropped_long_prompts = self._load(self.config.task.train_files)
        return problems

    def heldout(self, limit: int) -> list[Problem]:
        return self._load(self.config.task.heldout_files)[0][:limit]


def make_task(config: Config, codec) -> Task:
    """The task of `task.kind`; `codec` tokenises prompts (tasks/codec.py, from the policy's tokenizer)."""
    if config.task.kind == "custom":
        from asyncor.tasks.custom_task import CustomTask

        return CustomTask(config, codec)
    return FileTask(config, codec) if config.task.kind == "files" else BuiltinTask(config, codec)
