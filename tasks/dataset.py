"""Real training / evaluation data from local parquet or jsonl files.

Two layouts are read (`fmt="auto"` picks by columns):
* verl / Skywork-OR1-RL-Data: `prompt` is a list of chat messages
  (`{"role", "content"}`), `reward_model.ground_truth` the answer (math) or
  a JSON string / dict of tests (code), plus `data_source` and `extra_info`;
* plain: `prompt` is a string, with `answer` (math) or `tests` (code).
A problem is code when its reference is a tests dict (`inputs`/`outputs`,
`fn_name`, or `test_code`), math otherwise. Each problem gets a stable id:
its position in the file list, so seeds, cursors and filters refer to the
same problems across runs.

`render_prompt` applies the model's chat template (the `chat_template` of
its tokenizer_config.json, rendered with jinja2 as transformers does) or, for
a model without one, uses the user text as is. `load_problems` drops prompts
longer than the limit and says how many.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

CODE_KEYS = ("inputs", "fn_name", "test_code")


@dataclass
class DataProblem:
    id: int
    messages: list[dict]  # chat messages; a plain prompt becomes one user message
    kind: str  # "math" | "code"
    reference: object  # math: gold answer (str); code: tests (dict)
    data_source: str = "unknown"
    extra_info: dict = field(default_factory=dict)
    row: dict = field(default_factory=dict, repr=False)  # the original record (written back by `launch.py filter`)

    @property
    def answer(self) -> str:
        """For code the tests as JSON, so every problem has a printable reference."""
        return self.reference if isinstance(self.reference, str) else json.dumps(self.reference)


class DataError(ValueError):
    """A data file that cannot be used, with the reason and what would be accepted."""


def _read_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if path.endswith(".jsonl"):
        rows = []
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}:{n}: not JSON ({err.msg})") from None
        return rows
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise DataError(f"{path}: unknown format; use .jsonl or .parquet")


def _as_tests(value):
    """A tests dict from a dict or a JSON string, else None."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, ValueError):
            return None
    if isinstance(value, dict) and any(k in value for k in CODE_KEYS):
        return value
    return None


def _detect(row: dict) -> str:
    if isinstance(row.get("prompt"), list) and isinstance(row.get("reward_model"), dict):
        return "verl"
    if isinstance(row.get("prompt"), str) and ("answer" in row or "tests" in row):
        return "plain"
    raise DataError(f"unknown row layout with keys {sorted(row)}: expected verl (prompt: list of messages, "
                    "reward_model.ground_truth) or plain (prompt: str, answer or tests)")


def _problem(row: dict, pid: int, fmt: str, where: str) -> DataProblem:
    layout = _detect(row) if fmt == "auto" else fmt
    try:
        if layout == "verl":
            messages = [{"role": m["role"], "content": m["content"]} for m in row["prompt"]]
            reference = row["reward_model"]["ground_truth"]
        elif layout == "plain":
            messages = [{"role": "user", "content": row["prompt"]}]
            reference = row["tests"] if "tests" in row else row["answer"]
        else:
            raise DataError(f"unknown data format {fmt!r}: use auto, verl or plain")
    except (KeyError, TypeError) as err:
        raise DataError(f"{where}: missing column {err} for the {layout} layout") from None
    tests = _as_tests(reference)
    extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
    return DataProblem(pid, messages, "code" if tests is not None else "math",
                       tests if tests is not None else str(reference), str(row.get("data_source", "unknown")), extra,
                       row)


def read_problems(paths: list[str], fmt: str = "auto") -> list[DataProblem]:
    """Every problem of every file, in order, with stable ids."""
    problems = []
    for path in paths:
        for n, row in enumerate(_read_rows(path)):
            problems.append(_problem(row, len(problems), fmt, f"{path} row {n}"))
    if not problems:
        raise DataError(f"no problems in {paths}")
    return problems


def write_rows(path: str, rows: list[dict]) -> None:
    """Rows to .jsonl or .parquet (by extension), e.g. the problems a filter kept."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.endswith(".jsonl"):
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    else:
        raise DataError(f"{path}: unknown format; use .jsonl or .parquet")


def chat_template(model_dir: str) -> str | None:
    path = os.path.join(model_dir, "tokenizer_config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        cfg = json.load(f)
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: use "default"
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template


def render_prompt(messages: list[dict], template: str | None, bos_token: str = "", eos_token: str = "") -> str:
    """The prompt text the model sees: its chat template with a generation prompt, or the user text."""
    if template is None:
        return "\n\n".join(m["content"] for m in messages)
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise DataError(f"chat template: {message}")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=bos_token, eos_token=eos_token)


def load_problems(paths: list[str], codec, model_dir: str, max_prompt_tokens: int, fmt: str = "auto"
                  ) -> tuple[list[DataProblem], list, int]:
    """(problems, their prompt token ids, how many were dropped as longer than max_prompt_tokens)."""
    template = chat_template(model_dir)
    kept, ids, dropped = [], [], 0
    for problem in read_problems(paths, fmt):
        tokens = codec.encode_prompt(render_prompt(problem.messages, template))
        if len(tokens) > max_prompt_tokens:
            dropped += 1
            continue
        kept.append(problem)
        ids.append(tokens)
    if not kept:
        raise DataError(f"every prompt in {paths} is longer than {max_prompt_tokens} tokens")
    return kept, ids, dropped
