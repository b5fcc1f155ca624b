"""The environment seam (DESIGN §11): an episode is turns of policy tokens and environment tokens.

An episode starts from a problem's prompt. The policy generates until its turn ends: at eos, at one of the
environment's `turn_end_ids` (a tool call's closing tag), or at the response token limit. Each turn that
stopped goes to `Episode.step`, which answers with an `Observation`: tokens to append as context (never
trained), and whether the episode is done, with its reward. The actor then starts the next turn on the prompt,
every token so far and the observation, exactly as sampled and as returned: nothing is re-tokenised
(actors/episodes.py). A single-turn task is the one-turn case and needs no environment at all
(tasks/environments.py `make_environment` returns None, and the actor scores completions as before).

    Environment.open(problem) -> Episode        one per sample, on the actor's environment threads
    Episode.start() -> tokens                   appended before the first turn (an HTTP reset's observation)
    Episode.step(turn tokens) -> Observation    the environment's answer to one turn
    Episode.close()

Rewards. An episode that is done with `reward` None is scored by the task's verifier on the text of its last
policy turn (tasks/scoring.py: exact answer, math-verify, code tests); an environment that scores itself (the
HTTP one) gives the reward. An episode that ends because the environment failed gets reward 0 and its reason.

Concurrency. `open`, `start`, `step` and `close` run on the actor's environment threads (`task.env.workers`),
never on the decode loop, and may block up to `task.env.step_timeout_s` (the runner abandons a step past it).
Nothing an environment returns is trusted: the runner checks the types, ids and sizes (actors/episodes.py).

End reasons (counted per run, `actor/episode_end/<reason>`):
  answered        the policy ended a turn with eos (or the environment said done): scored
  length          the response token limit (prompt + every turn and observation) was reached
  turn_limit      `task.env.max_turns` turns without an answer
  tool_timeout    the tool ran past its deadline (a hang)
  tool_crash      the tool's process died or could not run
  tool_flood      the tool printed more than its output limit
  tool_garbage    the tool's output was not text (not UTF-8, or control bytes)
  env_timeout     an environment step past `task.env.step_timeout_s`
  env_error       the environment raised, or answered what is not an observation
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

END_REASONS = ("answered", "length", "turn_limit", "tool_timeout", "tool_crash", "tool_flood", "tool_garbage",
               "env_timeout", "env_error")
FAILURES = frozenset(END_REASONS) - {"answered", "length", "turn_limit"}  # the environment's fault: reward 0


@dataclass(frozen=True)
class Observation:
    token_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (K,) context appended
    done: bool = False
    reward: float | None = None  # when done: the episode's reward; None: the task's verifier scores the last turn
    reason: str = "answered"  # when done: why (END_REASONS)
    cut: bool = False  # the observation was longer than task.env.max_observation_tokens and was cut


@dataclass(frozen=True)
class EpisodeProblem:
    """What an environment knows of the problem an episode starts from."""

    prompt_id: int
    prompt_ids: np.ndarray  # (P,) int32
    reference: object  # the answer string, or a code problem's tests


class Episode(Protocol):
    def start(self) -> np.ndarray:
        """Tokens appended after the prompt before the first turn (usually none)."""

    def step(self, turn_ids: np.ndarray) -> Observation:
        """The environment's answer to a policy turn that ended at eos or at a turn-end token."""

    def close(self) -> None: ...


class Environment(Protocol):
    turn_end_ids: tuple[int, ...]  # tokens that end a policy turn besides eos (a tool call's closing tag)
    max_turns: int
    max_observation_tokens: int
    step_timeout_s: float
    inline: bool  # steps take microseconds (the calculator): the actor runs them on its loop, not on a thread

    def open(self, problem: EpisodeProblem) -> Episode: ...

    def close(self) -> None: ...


def clean_text(raw: bytes, limit: int) -> tuple[str | None, str]:
    """Untrusted output bytes as text: (text, "") or (None, the end reason). Not UTF-8, or control characters
    other than newline, carriage return (read as a newline) and tab: "tool_garbage"; longer than `limit` bytes:
    "tool_flood"."""
    if len(raw) > limit:
        return None, "tool_flood"
    try:
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # line ends, whatever the program's
    except UnicodeDecodeError:
        return None, "tool_garbage"
    if any((ord(c) < 32 and c not in "\n\t") or ord(c) == 127 for c in text):
        return None, "tool_garbage"
    return text, ""
