"""Loading real data: verl and plain layouts, jsonl and parquet, chat templates, errors, resumable cursor."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asyncor.buffer.prompts import PromptStream
from asyncor.tasks.dataset import DataError, load_problems, read_problems, render_prompt

DATA = Path(__file__).resolve().parents[1] / "data"

VERL_ROWS = [
    {"data_source": "aime", "prompt": [{"role": "system", "content": "Think."}, {"role": "user", "content": "1+1?"}],
     "reward_model": {"ground_truth": "2", "style": "rule"}, "extra_info": {"index": 0}},
    {"data_source": "leetcode", "prompt": [{"role": "user", "content": "Add two numbers."}],
     "reward_model": {"ground_truth": json.dumps({"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]})},
     "extra_info": {"index": 1}},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


class CharCodec:
    """One token per character (what the tiny model's tokenizer does)."""
    def encode_prompt(self, text):
        return np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int32)


def test_verl_layout_from_jsonl_and_parquet(tmp_path):
    from_jsonl = read_problems([write_jsonl(tmp_path / "d.jsonl", VERL_ROWS)])
    pq.write_table(pa.Table.from_pylist(VERL_ROWS), tmp_path / "d.parquet")
    from_parquet = read_problems([str(tmp_path / "d.parquet")])
    for problems in (from_jsonl, from_parquet):
        math, code = problems
        assert (math.kind, math.reference, math.data_source, math.messages[0]["role"]) == ("math", "2", "aime", "system")
        assert code.kind == "code" and code.reference["fn_name"] == "add" and code.data_source == "leetcode"
        assert [p.id for p in problems] == [0, 1]


def test_plain_layout_and_the_sample_data():
    problems = read_problems([str(DATA / "math.jsonl"), str(DATA / "code.jsonl")])
    kinds = [p.kind for p in problems]
    assert kinds.count("math") == 8 and kinds.count("code") == 4
    assert [p.id for p in problems] == list(range(12))  # stable ids across files
    assert problems[8].messages == [{"role": "user", "content": problems[8].messages[0]["content"]}]


def test_chat_template_and_long_prompts_dropped(tmp_path):
    template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert render_prompt(VERL_ROWS[0]["prompt"], template) == "<|system|>Think.\n<|user|>1+1?\n<|assistant|>"
    assert render_prompt([{"role": "user", "content": "hi"}], None) == "hi"
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    rows = [{"prompt": "x" * n, "answer": "1"} for n in (5, 500, 10)]
    problems, ids, dropped = load_problems([write_jsonl(tmp_path / "p.jsonl", rows)], CharCodec(), str(model), 60)
    assert dropped == 1 and [p.id for p in problems] == [0, 2]
    assert bytes(ids[0].astype(np.uint8)).decode() == "<|user|>xxxxx\n<|assistant|>"


@pytest.mark.parametrize("content,match", [
    (None, "no such file"),
    ("not json\n", "not JSON"),
    ('{"question": "1+1", "solution": "2"}\n', "unknown row layout"),
    ('{"prompt": [{"role": "user"}], "reward_model": {"ground_truth": "2"}}\n', "missing column"),
])
def test_clear_errors(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=match):
        read_problems([str(path)])
    with pytest.raises(DataError, match="unknown format"):
        read_problems([__file__])  # a .py file


def test_prompt_stream_is_seeded_and_its_cursor_resumes():
    problems = read_problems([str(DATA / "math.jsonl")])
    a, b = PromptStream(problems, seed=7), PromptStream(problems, seed=7)
    assert [p.id for p in a.take(20)] == [p.id for p in b.take(20)]  # deterministic, across epochs
    a.give_back(a.take(2)[:1])
    a.remove({3})
    resumed = PromptStream(problems, seed=7)
    resumed.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [p.id for p in resumed.take(25)] == [p.id for p in a.take(25)]
