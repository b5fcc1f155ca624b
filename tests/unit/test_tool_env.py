"""The tool environment (tasks/tool_env.py) with the calculator, on the tiny tokenizer with the calculator task's
characters (one token per character): call parsing, the observation and its cut, answers, a disabled tool, a
failing tool, and tags that are not one token."""

import json

import numpy as np
import pytest

from asyncor.configs.schema import EnvConfig
from asyncor.prepare.tiny_model import build_tokenizer, task_characters
from asyncor.tasks.codec import TextCodec
from asyncor.tasks.environment import EpisodeProblem, Observation
from asyncor.tasks.environments import make_environment, make_tool
from asyncor.tasks.tool_env import CalculatorTool, ToolEnvironment, ToolResult

TAGS = {"call_start": "(", "call_end": ")", "observation_start": "[", "observation_end": "]"}


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    path = tmp_path_factory.mktemp("calculator-tokenizer")
    tok = build_tokenizer(task_characters("calculator"))
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>"}))
    (path / "config.json").write_text(json.dumps({"eos_token_id": tok.token_to_id("<eos>"),
                                                  "vocab_size": tok.get_vocab_size()}))
    return TextCodec(str(path))


def settings(**overrides) -> EnvConfig:
    return EnvConfig(kind="tool", **{**TAGS, **overrides})


def episode(env: ToolEnvironment):
    problem = EpisodeProblem(prompt_id=0, prompt_ids=np.zeros(0, np.int32), reference="408")
    ep = env.open(problem)
    assert len(ep.start()) == 0
    return ep


def step_text(codec, ep, text: str) -> Observation:
    return ep.step(codec.encode_text(text))


class FailingTool:
    def __init__(self, failure: str):
        self.failure, self.calls = failure, []

    def run(self, source: str) -> ToolResult:
        self.calls.append(source)
        return ToolResult(failure=self.failure)

    def close(self) -> None:
        pass


def test_a_call_is_answered_between_the_observation_tags(codec):
    env = ToolEnvironment(settings(), codec, CalculatorTool())
    assert env.turn_end_ids == (codec.encode_text(")")[0],)
    ep = episode(env)
    obs = step_text(codec, ep, "(12*34)")
    assert codec.decode_all(obs.token_ids) == "[408]"
    assert obs.token_ids.dtype == np.int32
    assert not obs.done and not obs.cut and obs.reward is None
    # Only the text after the last call tag is the call; without a tag, the whole turn is.
    assert codec.decode_all(step_text(codec, ep, "7=(1+2(12*34)").token_ids) == "[408]"
    assert codec.decode_all(step_text(codec, ep, "100-1)").token_ids) == "[99]"


def test_a_call_the_calculator_cannot_read_is_answered_error(codec):
    tool = CalculatorTool()
    assert tool.run("12=34") == ToolResult("?")
    assert tool.run("1234567890123*2") == ToolResult("?")  # more than 12 digits
    assert tool.run(" 3 - 5 ") == ToolResult("-2")
    env = ToolEnvironment(settings(), codec, tool)
    obs = step_text(codec, episode(env), "(12=34)")
    assert not obs.done  # a wrong call is feedback, not a failure
    assert obs.token_ids[0] == codec.encode_text("[")[0] and obs.token_ids[-1] == codec.encode_text("]")[0]


def test_an_eos_turn_is_the_answer(codec):
    env = ToolEnvironment(settings(), codec, CalculatorTool())
    ep = episode(env)
    obs = ep.step(np.concatenate([codec.encode_text("408"), [codec.eos_id]]).astype(np.int32))
    assert obs.done and obs.reason == "answered" and obs.reward is None  # the task's verifier scores it
    assert len(obs.token_ids) == 0
    # A turn cut by the token limit (no call tag at its end) ends the same way: the runner tells the two apart.
    assert ep.step(codec.encode_text("40")).done
    assert ep.step(np.zeros(0, np.int32)).done


def test_a_disabled_tool_answers_a_question_mark_without_running(codec):
    tool = FailingTool("tool_crash")
    env = ToolEnvironment(settings(tool_enabled=False), codec, tool)
    obs = step_text(codec, episode(env), "(12*34)")
    assert codec.decode_all(obs.token_ids) == "[?]" and not obs.done
    assert tool.calls == []


@pytest.mark.parametrize("failure", ["tool_timeout", "tool_crash", "tool_flood", "tool_garbage"])
def test_a_failing_tool_ends_the_episode_with_reward_0(codec, failure):
    tool = FailingTool(failure)
    env = ToolEnvironment(settings(), codec, tool)
    obs = step_text(codec, episode(env), "5+(12*34)")
    assert obs.done and obs.reward == 0.0 and obs.reason == failure
    assert tool.calls == ["12*34"]


def test_a_long_observation_is_cut_and_keeps_its_closing_tag(codec):
    env = ToolEnvironment(settings(max_observation_tokens=5), codec, CalculatorTool())
    ep = episode(env)
    obs = step_text(codec, ep, "(123456*1000)")  # 123456000: 9 digits, room for 3
    assert codec.decode_all(obs.token_ids) == "[123]" and obs.cut and not obs.done
    obs = step_text(codec, ep, "(11*11)")  # 121 fits exactly
    assert codec.decode_all(obs.token_ids) == "[121]" and not obs.cut


def test_an_observation_limit_below_the_tags_keeps_only_the_opening_tag(codec):
    env = ToolEnvironment(settings(max_observation_tokens=1), codec, CalculatorTool())
    obs = step_text(codec, episode(env), "(2*3)")
    assert codec.decode_all(obs.token_ids) == "[" and obs.cut
    assert len(obs.token_ids) <= env.max_observation_tokens


def test_a_call_end_of_several_tokens_is_refused_naming_the_field(codec):
    with pytest.raises(ValueError, match=r"task\.env\.call_end = '\)\)' is 2 tokens"):
        ToolEnvironment(settings(call_end="))"), codec, CalculatorTool())
    with pytest.raises(ValueError, match=r"task\.env\.call_end = '<tool_call_end>' is"):
        ToolEnvironment(settings(call_end="<tool_call_end>"), codec, CalculatorTool())


def test_the_environment_exposes_its_settings_and_closes_its_tool(codec):
    closed = []

    class Tool(CalculatorTool):
        def close(self) -> None:
            closed.append(True)

    env = ToolEnvironment(settings(max_turns=3, max_observation_tokens=7, step_timeout_s=2.5), codec, Tool())
    assert (env.max_turns, env.max_observation_tokens, env.step_timeout_s) == (3, 7, 2.5)
    env.close()
    assert closed == [True]


def test_make_environment_builds_the_calculator_environment(codec):
    from asyncor.configs.loader import load_config

    overrides = ['task.env.kind="tool"'] + [f'task.env.{k}="{v}"' for k, v in TAGS.items()]
    config = load_config(None, overrides)
    assert isinstance(make_tool(config), CalculatorTool)
    env = make_environment(config, codec)
    assert isinstance(env, ToolEnvironment) and isinstance(env.tool, CalculatorTool)
    assert codec.decode_all(step_text(codec, episode(env), "(2*21)").token_ids) == "[42]"
    assert make_environment(load_config(None, []), codec) is None  # "single": no environment
