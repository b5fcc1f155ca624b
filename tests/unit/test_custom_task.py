"""task.kind = "custom": a user's task class by import path (tasks/custom_task.py), the docs' example task
(docs/examples/sort_digits.py, quoted whole in docs/custom_tasks.md) through the task interface, and bad tasks
refused with the index, field and what would be accepted."""

import os
import re
import sys

import numpy as np
import pytest

from asyncor.configs.schema import Config
from asyncor.tasks.codec import TextCodec
from asyncor.tasks.custom_task import Item, TaskError, check_item, warm_start_problems
from asyncor.tasks.task import make_task
from tests.conftest import write_tokenizer_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "docs", "examples")


@pytest.fixture(autouse=True)
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(EXAMPLES)


def example_config(**task):
    return Config.model_validate({"task": {"kind": "custom", "source": "sort_digits:SortDigits",
                                           "reward": "sort_digits:reward", "options": {"size": 500}, **task}})


def test_the_docs_example_is_the_file_the_tests_run():
    doc = open(os.path.join(ROOT, "docs", "custom_tasks.md")).read()
    block = re.search(r"```python\n# docs/examples/sort_digits.py\n(.*?)```", doc, re.S)
    assert block and block.group(1) == open(os.path.join(EXAMPLES, "sort_digits.py")).read()
    assert len(block.group(1).splitlines()) <= 30


def test_the_example_task_plugs_in_like_a_builtin_one(tmp_path):
    codec = TextCodec(str(write_tokenizer_dir(tmp_path / "tok")))
    task = make_task(example_config(), codec)
    train, held = task.training(), task.heldout(50)
    assert len(train) == 300 and len(held) == 50 and task.dropped_long_prompts == 0
    assert [p.id for p in train] == list(range(300)) and held[0].id == 300  # stable ids, splits apart
    p = train[0]
    assert p.kind == "custom" and p.data_source == "sort" and p.reference == "".join(sorted(codec.decode(
        p.prompt_ids).rstrip("=")))
    assert p.prompt_ids.dtype == np.int32 and codec.decode(p.prompt_ids).endswith("=")
    assert not task.needs_verifier_pool  # the reward function starts the pool by itself (tasks/scoring.py)
    # The same problems every time (seeded), and the warm start's demonstrations are the training items.
    again = make_task(example_config(), codec).training()
    assert [q.reference for q in again] == [q.reference for q in train]
    demos = warm_start_problems(example_config().task)
    assert len(demos) == 300 and demos[0].answer == p.reference and demos[0].prompt + "" == codec.decode(p.prompt_ids)
    # Its reward, as the verifier pool calls it.
    sys.path.insert(0, EXAMPLES)
    from sort_digits import reward

    problem = {"id": 0, "prompt": "4821=", "reference": "1248"}
    assert reward(problem, "1248", {}) == (1.0, {"exact": 1.0, "positions": 1.0})
    assert reward(problem, "1284", {})[0] == 0.25 and reward(problem, "12", {})[0] == 0.0


def test_long_prompts_are_dropped_and_counted(tmp_path):
    codec = TextCodec(str(write_tokenizer_dir(tmp_path / "tok")))
    config = example_config(options={"size": 500, "digits": 6})
    config.actors.max_prompt_tokens = 7  # <bos> + 6 digits + "=" is 8
    with pytest.raises(TaskError, match="every training prompt is longer"):
        make_task(config, codec).training()


@pytest.mark.parametrize("raw, says", [
    ("just text", "an Item or a dict"),
    ({"prompt": "1=", "reference": "1", "colour": "red"}, "unknown keys"),
    ({"reference": "1"}, "needs `prompt`"),
    ({"prompt": "", "reference": "1"}, "non-empty string"),
    ({"prompt": [{"role": "user"}], "reference": "1"}, "messages"),
    ({"prompt": "1=", "reference": "1", "kind": "fuzzy"}, "not one of"),
    ({"prompt": "1=", "reference": {1, 2}}, "plain JSON value"),
    ({"prompt": "1=", "reference": float("nan")}, "plain JSON value"),
    ({"prompt": "1=", "reference": "x", "kind": "code"}, "tests, a dict"),
    ({"prompt": "1=", "reference": "1", "answer": 1}, "answer"),
])
def test_bad_items_are_refused_with_their_field(raw, says):
    with pytest.raises(TaskError, match=re.escape(says)) as err:
        check_item(raw, "my.task training()[3]")
    assert "training()[3]" in str(err.value)


def test_good_items_in_every_form():
    assert check_item(Item("1=", "1"), "x").kind == "custom"
    assert check_item({"prompt": [{"role": "user", "content": "hi"}], "reference": {"inputs": ["1"], "outputs": ["1"]},
                       "kind": "code"}, "x").kind == "code"


class NoHeldout:
    def __init__(self, options):
        pass

    def training(self):
        return [Item("1=", "1", kind="exact")]


class Raises(NoHeldout):
    def heldout(self):
        raise OSError("the data server is down")


class CustomWithoutReward(Raises):
    def training(self):
        return [Item("1=", "1")]


def test_a_task_that_cannot_be_used_says_why(tmp_path):
    codec = TextCodec(str(write_tokenizer_dir(tmp_path / "tok")))
    here = __name__
    with pytest.raises(TaskError, match="no heldout"):
        make_task(example_config(source=f"{here}:NoHeldout"), codec)
    with pytest.raises(TaskError, match="heldout\\(\\) raised OSError: the data server is down"):
        make_task(example_config(source=f"{here}:Raises"), codec).heldout(5)
    with pytest.raises(TaskError, match="scored by task.reward"):
        make_task(example_config(source=f"{here}:CustomWithoutReward", reward=None), codec).training()
    with pytest.raises(TaskError, match="cannot import"):
        make_task(example_config(source="no_such_module_xyz:T"), codec)
    # "exact" items need no reward function: the built-in exact-answer rule scores them.
    assert make_task(example_config(source=f"{here}:Raises", reward=None), codec).training()[0].kind == "arithmetic"


def test_launch_refuses_a_task_or_reward_that_does_not_import_before_starting_anything():
    from asyncor.launcher.preflight import PreflightError, check_user_code

    check_user_code(example_config())  # the example imports (docs/examples is on the path here)
    with pytest.raises(PreflightError, match="task.source = 'nowhere_xyz:Task': cannot import"):
        check_user_code(example_config(source="nowhere_xyz:Task"))
    with pytest.raises(PreflightError, match="task.reward = 'sort_digits:nothing': sort_digits has no callable"):
        check_user_code(example_config(reward="sort_digits:nothing"))
    check_user_code(example_config(reward="http://127.0.0.1:9/score"))  # a server is not probed: it may start later
