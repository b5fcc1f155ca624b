"""A user's task, by import path: `task.kind = "custom"`, `task.source = "package.module:Class"` (docs/custom_tasks.md).

The user writes a class (or any callable) taking `task.options` (a dict) and returning an object with

    training() -> iterable of Item          the RL prompts (the buffer's stream)
    heldout() -> iterable of Item           the evaluation problems (before, during, after RL; the first
                                            eval.max_problems of them)

An `Item` (or a dict with the same keys) is one problem:

    prompt       str, or chat messages [{"role", "content"}]: rendered with the model's chat template when it has
                 one (the built-in tiny model has none: the text as is, in its alphabet 0-9 + - * =)
    reference    what the reward compares with: any plain JSON value (it travels to the actors in msgpack)
    kind         how answers are scored: "custom" (task.reward, the user's function or reward server), "exact"
                 (the response, stripped, equals str(reference)), "math" (math-verify), "code" (the sandboxed
                 test runner, reference = tests as in docs/verifiers.md)
    data_source  accuracy is also reported per source
    answer       a demonstration (str), optional: the supervised warm start of the built-in tiny model trains on
                 (prompt, answer) pairs; ignored with model.path

Problems get stable ids by position (training 0..n-1, held-out after them), so seeds, cursors and checkpoints
refer to the same problems across runs as long as the class returns them in the same order. Items are checked
when the task is made: a bad one is a TaskError naming its index, field and what is accepted. Prompts longer than
`actors.max_prompt_tokens` are dropped and counted, as for data files.

Who calls it: every role that makes the task (buffer: training; actors and evaluation: heldout; the warm start:
training's demonstrations). The user's constructor and methods run in those processes, once each.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, is_dataclass

from asyncor.configs.schema import Config, TaskConfig
from asyncor.tasks.import_path import ImportPathError, load_callable
from asyncor.tasks.problem import Problem

ITEM_KINDS = {"custom": "custom", "exact": "arithmetic", "math": "math", "code": "code"}  # -> the scoring kind


@dataclass(frozen=True)
class Item:
    prompt: str | list[dict]
    reference: object
    kind: str = "custom"
    data_source: str = "custom"
    answer: str | None = None


class TaskError(ValueError):
    """A custom task that cannot be used, with the reason and what would be accepted."""


def load_source(path: str):
    """The class (or factory) at "package.module:Name"."""
    try:
        return load_callable(path, "task.source", "package.module:Class")
    except ImportPathError as exc:
        raise TaskError(str(exc)) from None


def check_item(raw, where: str) -> Item:
    """An Item from what the user's task returned (an Item, a dataclass or a dict with Item's keys)."""
    if is_dataclass(raw) and not isinstance(raw, type):
        raw = asdict(raw)
    if not isinstance(raw, dict):
        raise TaskError(f"{where}: expected an Item or a dict, got {type(raw).__name__}")
    unknown = set(raw) - set(Item.__dataclass_fields__)
    if unknown:
        raise TaskError(f"{where}: unknown keys {sorted(unknown)}; an item has {list(Item.__dataclass_fields__)}")
    if "prompt" not in raw or "reference" not in raw:
        raise TaskError(f"{where}: needs `prompt` and `reference`")
    item = Item(**raw)
    prompt = item.prompt
    ok = (isinstance(prompt, str) and prompt) or (
        isinstance(prompt, list) and prompt and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                    and isinstance(m.get("content"), str) for m in prompt))
    if not ok:
        raise TaskError(f"{where}: prompt must be a non-empty string or a list of {{'role', 'content'}} messages")
    if item.kind not in ITEM_KINDS:
        raise TaskError(f"{where}: kind {item.kind!r} is not one of {sorted(ITEM_KINDS)}")
    if not isinstance(item.data_source, str) or not item.data_source:
        raise TaskError(f"{where}: data_source must be a non-empty string")
    if item.answer is not None and not isinstance(item.answer, str):
        raise TaskError(f"{where}: answer (a demonstration for the warm start) must be a string or None")
    try:  # it travels to the actors in msgpack and to user rewards in JSON: plain values only
        json.dumps(item.reference, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TaskError(f"{where}: reference must be a plain JSON value (str, number, bool, None, list, dict): "
                        f"{exc}") from None
    if item.kind == "code" and not isinstance(item.reference, dict):
        raise TaskError(f"{where}: a code item's reference is its tests, a dict (docs/verifiers.md)")
    return item


def user_task(task_cfg: TaskConfig):
    """The user's task object, made from task.source with task.options."""
    made = load_source(task_cfg.source)(dict(task_cfg.options))
    for method in ("training", "heldout"):
        if not callable(getattr(made, method, None)):
            raise TaskError(f"task.source = {task_cfg.source!r}: the task has no {method}() method")
    return made


def items(task, split: str, source: str, reward: str | None) -> list[Item]:
    """The checked items of `split` ("training" | "heldout")."""
    try:
        raw = list(getattr(task, split)())
    except TaskError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's error, said with where it came from
        raise TaskError(f"task.source = {source!r}: {split}() raised {type(exc).__name__}: {exc}") from None
    out = [check_item(r, f"{source} {split}()[{i}]") for i, r in enumerate(raw)]
    if split == "training" and not out:
        raise TaskError(f"task.source = {source!r}: training() returned no items")
    if reward is None and any(i.kind == "custom" for i in out):
        raise TaskError(f"task.source = {source!r}: items of kind \"custom\" are scored by task.reward; set it to "
                        f"\"package.module:function\" or a reward server's URL (or give the items kind \"exact\", "
                        f"\"math\" or \"code\")")
    return out


class CustomTask:
    """The Task (tasks/task.py) over a user's task object: its items tokenised the way the model reads them."""

    def __init__(self, config: Config, codec):
        from asyncor.tasks.dataset import chat_template

        self.config, self.codec = config, codec
        self.source = config.task.source
        self.user = user_task(config.task)
        self.template = chat_template(config.model.path) if config.model.path else None
        self.dropped_long_prompts = 0
        self._train: list[Item] | None = None

    @property
    def train_items(self) -> list[Item]:
        if self._train is None:
            self._train = items(self.user, "training", self.source, self.config.task.reward)
        return self._train

    @property
    def needs_verifier_pool(self) -> bool:
        """math / code items are verified in the pool (a task.reward function starts it too: tasks/scoring.py)."""
        return any(i.kind in ("math", "code") for i in self.train_items)

    def prompt_text(self, item: Item) -> str:
        from asyncor.tasks.dataset import render_prompt

        messages = [{"role": "user", "content": item.prompt}] if isinstance(item.prompt, str) else item.prompt
        return render_prompt(messages, self.template)

    def _problems(self, its: list[Item], first_id: int) -> tuple[list, int]:
        problems, dropped = [], 0
        for n, item in enumerate(its):
            ids = self.codec.encode_prompt(self.prompt_text(item))
            if len(ids) > self.config.actors.max_prompt_tokens:
                dropped += 1
                continue
            problems.append(Problem(first_id + n, ids, ITEM_KINDS[item.kind], item.reference, item.data_source))
        return problems, dropped

    def training(self) -> list:
        problems, self.dropped_long_prompts = self._problems(self.train_items, 0)
        if not problems:
            raise TaskError(f"task.source = {self.source!r}: every training prompt is longer than "
                            f"actors.max_prompt_tokens = {self.config.actors.max_prompt_tokens}")
        return problems

    def heldout(self, limit: int) -> list:
        held = items(self.user, "heldout", self.source, self.config.task.reward)
        return self._problems(held, len(self.train_items))[0][:limit]


def warm_start_problems(task_cfg: TaskConfig) -> list:
    """The training items that have an `answer`, as the warm start's (prompt, answer) problems (tasks/builtin.py):
    the built-in tiny model learns the task's format from them before RL. None: TaskError naming `answer`."""
    from asyncor.tasks.arithmetic import TextProblem

    out = []
    for n, item in enumerate(items(user_task(task_cfg), "training", task_cfg.source, task_cfg.reward)):
        if item.answer is not None:
            prompt = item.prompt if isinstance(item.prompt, str) else "\n\n".join(m["content"] for m in item.prompt)
            out.append(TextProblem(n, prompt, item.answer))
    if not out:
        raise TaskError(f"task.source = {task_cfg.source!r}: the warm start of the built-in tiny model needs training "
                        f"items with an `answer` (a demonstration); give some, or set warm_start.enabled = false")
    return out
