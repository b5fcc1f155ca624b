"""The prompt stream the buffer hands to actors: seeded shuffle per epoch, a
cursor, prompts given back (unused grants) served first again, and prompts
removed for good (online filtering).

Each prompt is handed out at most once at a time: a prompt given back twice is queued once, and `take` never
returns one twice nor one that is `busy` (granted and not yet answered). `state_dict` names the training set it
walks (`problems`: how many, `digest`: a hash of the shuffle seed and every problem's id and prompt tokens);
`load_state_dict` refuses a state saved over another training set (a resumed run whose data, `task.*` or
`run.seed` changed) with a ValueError that says so, instead of walking a cursor past the end of the order.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque

import numpy as np

from asyncor.tasks.task import Problem

SAME_DATA = ("A resumed run needs the training set it was saved with: the same task.* settings, run.seed, data files, "
             "tokenizer and (task.kind = \"files\") actors.max_prompt_tokens. Start a new run to train on other data.")


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
        self._digest = self.digest()  # the problems never change: hashed once
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
            problem = self._returned.popleft()
            if problem.id in busy or problem.id in taken:
                continue  # already in flight (or in this grant): queued again when that grant ends unanswered
            out.append(problem)
            taken.add(problem.id)
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
                "removed": sorted(self._removed), "problems": len(self.problems), "digest": self._digest}

    def digest(self) -> str:
        """A hash of the shuffle seed and the training set: every problem's id and prompt tokens, in order."""
        h = hashlib.sha256(f"seed={self.seed};".encode())
        for p in self.problems:
            h.update(f"{int(p.id)}:".encode())
            h.update(_prompt_bytes(p))
            h.update(b";")
        return h.hexdigest()

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict`'s output. ValueError (nothing changed) when it was saved over another
        training set, or when its cursor, epoch or ids do not fit this one."""
        self._check_same_problems(state)
        epoch, cursor = int(state["epoch"]), int(state["cursor"])
        if epoch < 0 or not 0 <= cursor <= len(self.problems):
            raise ValueError(f"the saved data cursor (epoch {epoch}, position {cursor}) does not fit a training set "
                             f"of {len(self.problems)} problems")
        known = {p.id: p for p in self.problems}
        unknown = [i for i in [*state["returned"], *state["removed"]] if i not in known]
        if unknown:
            raise ValueError(f"the saved prompt lists name {len(unknown)} problem ids this training set lacks "
                             f"(e.g. {unknown[:3]})")
        self.epoch = epoch
        self._reshuffle()
        self._cursor = cursor
        self._removed = {int(i) for i in state["removed"]}
        self._returned = deque()
        self.give_back([known[i] for i in state["returned"] if i not in self._removed])

    def _check_same_problems(self, state: dict) -> None:
        """A state saved over another training set (or shuffle seed) would walk another order, or past its end."""
        count = state.get("problems")
        if count is None:  # saved before the digest existed: the range checks of load_state_dict still apply
            return
        if int(count) != len(self.problems):
            raise ValueError(f"the training set has {len(self.problems)} problems; the state was saved with {count}. "
                             f"{SAME_DATA}")
        if state.get("digest") != self._digest:
            raise ValueError(f"the training set or its shuffle seed differs from the one the state was saved with "
                             f"(other problem ids, prompts or run.seed). {SAME_DATA}")

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
        """Serve these again first (after those already given back); one already queued is queued once."""
        queued = {p.id for p in self._returned}
        for p in problems:
            if p.id not in queued and p.id not in self._removed:
                self._returned.append(p)
                queued.add(p.id)


def _prompt_bytes(problem) -> bytes:
    """The prompt as the model reads it (`prompt_ids`, tasks/task.py `Problem`), or its text for problems not yet
    tokenised (the tasks' own problem types, which the stream also walks)."""
    ids = getattr(problem, "prompt_ids", None)
    if ids is not None:
        return np.asarray(ids, dtype="<i4").tobytes()
    return str(getattr(problem, "prompt", "")).encode()
