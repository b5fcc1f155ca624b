"""The prompt stream the buffer hands to actors: seeded shuffle per epoch, a
cursor, and prompts given back (unused grants) served first again."""

from __future__ import annotations

import random
from collections import deque

from tasks.arithmetic import Problem


class PromptStream:
    def __init__(self, problems: list[Problem], seed: int):
        if not problems:
            raise ValueError("the prompt stream needs at least one problem")
        self.problems = problems
        self.seed = seed
        self.epoch = 0
        self._order: list[int] = []
        self._cursor = 0
        self._returned: deque[Problem] = deque()
        self._reshuffle()

    def _reshuffle(self) -> None:
        self._order = list(range(len(self.problems)))
        random.Random(f"{self.seed}-{self.epoch}").shuffle(self._order)
        self._cursor = 0

    def take(self, n: int) -> list[Problem]:
        out = []
        while len(out) < n:
            if self._returned:
                out.append(self._returned.popleft())
                continue
            if self._cursor == len(self._order):
                self.epoch += 1
                self._reshuffle()
            out.append(self.problems[self._order[self._cursor]])
            self._cursor += 1
        return out

    def give_back(self, problems: list[Problem]) -> None:
        self._returned.extend(problems)
