"""A guessing game (docs/environments.md): the policy guesses, the environment answers + (higher) or - (lower).

    [task.env]
    kind = "custom"
    factory = "asyncor.docs.examples.guess_env:make"
"""

import numpy as np

from asyncor.tasks.environment import Observation


class GuessEpisode:
    def __init__(self, env, secret: int):
        self.env, self.secret = env, secret

    def start(self) -> np.ndarray:
        return np.zeros(0, np.int32)  # nothing before the first turn

    def step(self, turn_ids: np.ndarray) -> Observation:
        digits = "".join(c for c in self.env.codec.decode(turn_ids) if c.isdigit())[:6]
        if not digits:
            return Observation(done=True, reward=0.0)
        if int(digits) == self.secret:
            return Observation(done=True, reward=1.0)
        return Observation(self.env.codec.encode_text("+" if int(digits) < self.secret else "-"))

    def close(self) -> None:
        pass


class GuessEnvironment:
    inline, max_observation_tokens = True, 4  # microseconds per step: run on the actor's loop

    def __init__(self, settings, codec):
        self.codec, self.max_turns, self.step_timeout_s = codec, settings.max_turns, settings.step_timeout_s
        self.turn_end_ids = (int(codec.encode_text("=")[0]),)  # a guess ends with "="

    def open(self, problem) -> GuessEpisode:
        return GuessEpisode(self, int(np.random.default_rng(problem.prompt_id).integers(0, 100)))

    def close(self) -> None:
        pass


def make(settings, codec) -> GuessEnvironment:
    return GuessEnvironment(settings, codec)
