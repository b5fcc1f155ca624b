"""The prompt stream the buffer hands to actors: seeded shuffle per epoch, a
cursor, prompts given back (unused grants) served first again, and prompts
removed for good (online filtering)."""

from __future__ import annotations

import random
from collections import deque

from asyncor.tasks.task import Problem


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
        self._removed: set[int] = set()
        self._reshuffle()

    def _reshuffle(self) -> None:
        self._order = list(range(len(self.problems)))
        random.Random(f"{self.seed}-{self.epoch}").shuffle(self._order)
        self._cursor = 0

    def take(self, n: int, busy: set[int] | frozenset = frozenset()) -> list[Problem]:
        """Up to `n` prompts, none of them in `busy` (granted and not yet answered): with a pool smaller than
        the in-flight window a new epoch would otherwise hand out a prompt still in flight. Fewer than `n`
        when every other prompt is busy (one pass over the order at most)."""
        out, taken = [], set()
        while len(out) < n and self._returned:
            out.append(self._returned.popleft())
            taken.add(out[-1].id)
        for _ in range(len(self._order)):
            if len(out) == n:
                break
            if self._cursor == len(self._order):
                self.epoch += 1
                self._reshuffle()
            problem = self.problems[self._order[self._cursor]]
            if problem.id in busy or problem.id in taken:
                if len(busy) + len(taken) >= self.remaining:
                    break  # everything left is in flight: leave the cursor on it for later
                self._cursor += 1
                continue
            self._cursor += 1
            if problem.id not in self._removed:
                out.append(problem)
                taken.add(problem.id)
        return out

    def state_dict(self) -> dict:
        """Where the stream stands (JSON-able): a restarted buffer continues from here."""
        return {"epoch": self.epoch, "cursor": self._cursor, "returned": [p.id for p in self._returned],
                "removed": sorted(self._removed)}

    def load_state_dict(self, state: dict) -> None:
        by_id = {p.id: p for p in self.problems}
        self.epoch = int(state["epoch"])
        self._reshuffle()
        self._cursor = int(state["cursor"])
        self._returned = deque(by_id[i] for i in state["returned"] if i in by_id)
        self._removed = set(state["removed"])

    @property
    def remaining(self) -> int:
        return len(self.problems) - len(self._removed)

    def remove(self, ids: set[int]) -> int:
        """Take these problems out of the pool for good (never all of it); returns how many were removed."""
        known = {p.id for p in self.problems} - self._removed
        ids = set(ids) & known
        if len(ids) >= len(known):
            return 0  # removing every prompt would leave nothing to train on: keep the pool
        self._removed |= ids
        self._returned = deque(p for p in self._returned if p.id not in self._removed)
        return len(ids)

    def give_back(self, problems: list[Problem]) -> None:
        self._returned.extend(problems)
