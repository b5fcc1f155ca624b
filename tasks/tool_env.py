"""The tool environment (task.env.kind = "tool"): the policy calls a tool between `call_start` and `call_end`.

A turn that ends with the `call_end` token is a call: the text after the last `call_start` is the tool's input,
and the tool's output comes back as the observation `observation_start + output + observation_end`, tokenised
once by the policy's tokenizer and appended as context. A turn that ends with eos is the answer: the episode is
done and the task's verifier scores that turn's text. With `tool_enabled` false every call is answered
`observation_start + "?" + observation_end` (the same episodes without the tool).

Tools (tasks/environments.py `make_tool`), each thread-safe, each bounded in time and output:
  calculator  integer `a*b`, `a+b`, `a-b` (anything else: "?"); microseconds, on the actor's loop
  python      the code runs in the verifiers' sandbox (tasks/python_tool.py): what it prints comes back
A tool that fails (hangs, dies, floods, prints garbage) ends the episode with that reason (tasks/environment.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from asyncor.tasks.environment import EpisodeProblem, Observation

MAX_CALL_TOKENS = 1 << 16  # a longer call is refused unread (the turn limit bounds it anyway)


@dataclass(frozen=True)
class ToolResult:
    output: str = ""
    failure: str = ""  # "" when it ran; else the end reason: tool_timeout | tool_crash | tool_flood | tool_garbage


class Tool(Protocol):
    def run(self, source: str) -> ToolResult: ...

    def close(self) -> None: ...


class CalculatorTool:
    """`a*b`, `a+b` or `a-b` of non-negative integers of at most 12 digits; anything else answers "?" (a character
    the tiny tokenizer has)."""

    PATTERN = re.compile(r"\s*(\d{1,12})\s*([*+-])\s*(\d{1,12})\s*")
    inline = True  # microseconds: run on the actor's loop (tasks/environment.py)

    def run(self, source: str) -> ToolResult:
        m = self.PATTERN.fullmatch(source)
        if m is None:
            return ToolResult("?")
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return ToolResult(str({"*": a * b, "+": a + b, "-": a - b}[op]))

    def close(self) -> None:
        pass


def single_token(codec, text: str, field: str) -> int:
    """The one token id of `text`; ValueError naming `field` otherwise (vLLM stops on token ids)."""
    ids = codec.encode_text(text)
    if len(ids) != 1:
        raise ValueError(f"task.env.{field} = {text!r} is {len(ids)} tokens of the model's tokenizer; it must be "
                         "exactly one (a token the tokenizer has for it, e.g. Qwen's </tool_call>)")
    return int(ids[0])


class ToolEpisode:
    def __init__(self, env: "ToolEnvironment"):
        self.env = env

    def start(self) -> np.ndarray:
        return np.zeros(0, np.int32)

    def step(self, turn_ids: np.ndarray) -> Observation:
        env = self.env
        if not len(turn_ids) or int(turn_ids[-1]) != env.call_end_id:
            return Observation(done=True, reason="answered")
        text = env.codec.decode_all(turn_ids[: MAX_CALL_TOKENS])
        at = text.rfind(env.settings.call_start)
        call = text[at + len(env.settings.call_start):] if at >= 0 else text
        call = call[: len(call) - len(env.settings.call_end)] if call.endswith(env.settings.call_end) else call
        if not env.settings.tool_enabled:
            result = ToolResult("?")
        else:
            result = env.tool.run(call)
        if result.failure:
            return Observation(done=True, reward=0.0, reason=result.failure)
        return env.observation(result.output)

    def close(self) -> None:
        pass


class ToolEnvironment:
    def __init__(self, settings, codec, tool: Tool):
        self.settings, self.codec, self.tool = settings, codec, tool
        self.call_end_id = single_token(codec, settings.call_end, "call_end")
        self.turn_end_ids = (self.call_end_id,)
        self.max_turns = settings.max_turns
        self.max_observation_tokens = settings.max_observation_tokens
        self.step_timeout_s = settings.step_timeout_s
        self.inline = getattr(tool, "inline", False) or not settings.tool_enabled
        self._start = codec.encode_text(settings.observation_start)
        self._end = codec.encode_text(settings.observation_end)

    def observation(self, output: str) -> Observation:
        """`observation_start + output + observation_end` in tokens, the output cut so the whole fits."""
        body = self.codec.encode_text(output)
        room = max(self.max_observation_tokens - len(self._start) - len(self._end), 0)
        cut = len(body) > room
        ids = np.concatenate([self._start, body[:room], self._end]).astype(np.int32)
        return Observation(ids[: self.max_observation_tokens], cut=cut)

    def open(self, problem: EpisodeProblem) -> ToolEpisode:
        return ToolEpisode(self)

    def close(self) -> None:
        self.tool.close()
