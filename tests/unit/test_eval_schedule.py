"""When the evaluating actor runs the held-out evaluation during RL, and which configs allow it."""

import pytest

from asyncor.actors.evaluate import due, metrics_of, response_tokens
from asyncor.configs.loader import ConfigError, load_config


def evaluated(loaded_versions, every, final):
    """The versions an actor that loads `loaded_versions` in order evaluates."""
    done = []
    for v in loaded_versions:
        if due(v, done[-1] if done else 0, every, final):
            done.append(v)
    return done


def test_every_multiple_once_when_every_version_is_loaded():
    assert evaluated(range(0, 13), every=4, final=13) == [4, 8, 12]


def test_skipped_versions_evaluate_the_first_one_past_the_multiple():
    # sync.every or newer staged weights can skip versions: 4 and 8 never loaded.
    assert evaluated([0, 3, 5, 6, 7, 9, 12], every=4, final=20) == [5, 9, 12]
    # A jump over two multiples evaluates once.
    assert evaluated([0, 1, 9], every=4, final=20) == [9]


def test_version_zero_and_the_final_version_are_left_to_the_before_and_after_phases():
    assert evaluated(range(0, 9), every=4, final=8) == [4]
    assert evaluated(range(0, 9), every=1, final=8) == [1, 2, 3, 4, 5, 6, 7]


def test_off_by_default():
    assert not due(60, 0, 0, 1000)
    assert load_config().eval.every_steps == 60  # the tiny run draws a curve; the schema default is off
    assert load_config(None, ["eval.every_steps=0"]).eval.every_steps == 0


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match=r"eval.actor \(2\) must be below actors.count \(2\)"):
        load_config(None, ["eval.every_steps=5", "actors.count=2", "eval.actor=2"])
    with pytest.raises(ConfigError, match="eval.every_steps"):
        load_config(None, ["eval.every_steps=-1"])
    with pytest.raises(ConfigError, match="heldout_files"):
        load_config(None, ['task.kind="files"', 'task.train_files=["tests/data/math.jsonl"]', "eval.before_and_after=false",
                           "eval.every_steps=5"])


def test_evaluation_length_defaults_to_the_first_stage():
    assert response_tokens(load_config()) == load_config().actors.max_response_tokens
    assert response_tokens(load_config(None, ["eval.max_response_tokens=12"])) == 12


def test_metrics_are_named_for_the_eval_role():
    result = {"accuracy": 0.5, "greedy_accuracy": 0.75, "pass_at_k": 1.0, "seconds": 2.0,
              "by_source": {"aime": 0.25, "lcb": 0.75}}
    assert metrics_of(result) == {"eval/accuracy": 0.5, "eval/greedy_accuracy": 0.75, "eval/pass_at_k": 1.0,
                                  "eval/seconds": 2.0, "eval/accuracy/aime": 0.25, "eval/accuracy/lcb": 0.75}
