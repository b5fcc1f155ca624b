"""The sequences an actor has in its engine, grouped by granted prompt.

A granted prompt becomes `n` sequences: one engine request of n (`together`,
the default: vLLM prepares the prompt once and reports the sequences when the
last one ends), or one streamed request each when running sequences are
restarted on new weights (`inflight_kv = "recompute"`). New tokens are
appended with the behaviour log-probs the engine reports and the policy
version that sampled each (the version loaded, for a step's streamed tokens;
the engine's per-token versions, for a sequence reported whole); a group is
complete when its last sequence finishes, and is handed on at once, whatever
its neighbours are doing. Pure bookkeeping: no engine, no sockets (tests drive it directly).

A multi-turn episode (DESIGN §11) is a sequence whose engine request ends at each turn: `detach` takes it out of
the engine while the environment answers, `observe` appends the environment's tokens (loss mask 0, log-prob 0,
version -1), `attach` gives it a fresh request for its next turn, and `finish` ends it with the episode's end
reason (and the environment's reward, if it gave one).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Prompt:
    """One prompt of a grant, with what scoring needs."""

    prompt_id: int
    token_ids: np.ndarray  # (P,) int32
    kind: str  # arithmetic | math | code
    reference: object  # answer string, or the code tests


@dataclass
class Sequence:
    """One sample being generated. `request_id` changes when the sequence is restarted (recompute).
    `engine_request` is the engine request holding it: its own id, or its group's when the group's
    samples are one request of n (then `request_id` is `<engine_request>/<index>`)."""

    request_id: str
    prompt: Prompt
    max_tokens: int
    engine_request: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    index: int = 0  # its place in the group (0 .. n-1)
    # Episodes (multi-turn) only:
    multi_turn: bool = False
    mask: list[int] = field(default_factory=list)  # 1 per policy token, 0 per environment token
    turns: int = 0  # policy turns that ended
    turn_start: int = 0  # where the current (or last) policy turn starts in `tokens`
    end_reason: str = ""  # tasks/environment.py END_REASONS
    reward: float | None = None  # the environment's reward; None: the task's verifier scores the last turn
    episode: object = None  # the environment's Episode, once opened
    env_s: float = 0.0  # time waiting for the environment (tool runs, HTTP steps)
    cut_observations: int = 0
    cached_tokens: int = 0  # prompt tokens of turns 2.. found in the prefix cache
    resumed_tokens: int = 0  # prompt tokens of turns 2..

    def resume_prompt(self) -> np.ndarray:
        """Prompt plus the tokens so far: what the engine re-reads to continue on new weights."""
        return np.concatenate([self.prompt.token_ids, np.asarray(self.tokens, dtype=np.int32)])

    @property
    def tokens_left(self) -> int:
        return self.max_tokens - len(self.tokens)

    @property
    def last_turn(self) -> list[int]:
        """The tokens of the current (or last) policy turn: what a verifier reads as the answer."""
        return self.tokens[self.turn_start:]


@dataclass
class Group:
    """The `n` sequences of one granted prompt."""

    prompt: Prompt
    sequences: list[Sequence]
    started: float  # perf_counter at the first request
    finished: float = 0.0

    @property
    def done(self) -> bool:
        return all(s.finish_reason is not None for s in self.sequences)

    @property
    def gen_s(self) -> float:
        return self.finished - self.started

    @property
    def num_tokens(self) -> int:
        return sum(len(s.tokens) for s in self.sequences)


class InFlight:
    """Groups with sequences in the engine, indexed by request id."""

    def __init__(self):
        self.groups: dict[int, Group] = {}  # prompt id -> group
        self._by_request: dict[str, Sequence] = {}
        self._group_of: dict[str, Group] = {}
        self._waiting: dict[int, Group] = {}  # id(sequence) -> group: episodes waiting for their environment
        self._ids = itertools.count()

    def start(self, prompt: Prompt, n: int, max_tokens: int, together: bool = False) -> list[Sequence]:
        """Open a group of `n` sequences; returns them for the engine to add, one request each, or
        (`together`) one request of n whose id is their `engine_request`."""
        if prompt.prompt_id in self.groups:
            raise ValueError(f"prompt {prompt.prompt_id} is already in flight")
        if together:
            base = self._new_id(prompt)
            sequences = [Sequence(f"{base}/{k}", prompt, max_tokens, base, index=k) for k in range(n)]
        else:
            sequences = [Sequence(rid, prompt, max_tokens, rid, index=k)
                         for k, rid in enumerate(self._new_id(prompt) for _ in range(n))]
        group = Group(prompt, sequences, time.perf_counter())
        self.groups[prompt.prompt_id] = group
        for s in group.sequences:
            self._index(s, group)
        return group.sequences

    def record(self, request_id: str, token_ids, logprobs, version: int, finish_reason: str | None,
               versions=None) -> Group | None:
        """Append tokens to their sequence, each labelled `version` (one step's tokens) or with its own entry of
        `versions` (a sequence reported whole at its end); the group if this completed it. Unknown ids (a
        request aborted by a restart, whose last output was already queued) are ignored."""
        seq = self._by_request.get(request_id)
        if seq is None:
            return None
        if len(token_ids) != len(logprobs) or (versions is not None and len(versions) != len(token_ids)):
            raise ValueError(f"{request_id}: {len(token_ids)} tokens, {len(logprobs)} log-probs, versions "
                             f"{None if versions is None else len(versions)}")
        seq.tokens.extend(int(t) for t in token_ids)
        seq.logprobs.extend(float(x) for x in logprobs)
        seq.versions.extend([version] * len(token_ids) if versions is None else [int(v) for v in versions])
        if seq.multi_turn:
            seq.mask.extend([1] * len(token_ids))
        if finish_reason is None:
            return None
        seq.finish_reason = finish_reason
        group = self._group_of.pop(request_id)
        del self._by_request[request_id]
        return self._complete(group)

    def _complete(self, group: Group) -> Group | None:
        if not group.done:
            return None
        group.finished = time.perf_counter()
        del self.groups[group.prompt.prompt_id]
        return group

    # ------------------------------------------------------------------ episodes

    def start_episodes(self, prompt: Prompt, n: int, max_tokens: int) -> list[Sequence]:
        """Open a group of `n` episodes, none in the engine yet (`attach` each once its episode has started)."""
        if prompt.prompt_id in self.groups:
            raise ValueError(f"prompt {prompt.prompt_id} is already in flight")
        sequences = [Sequence("", prompt, max_tokens, "", index=k, multi_turn=True) for k in range(n)]
        self.groups[prompt.prompt_id] = Group(prompt, sequences, time.perf_counter())
        self._waiting.update({id(s): self.groups[prompt.prompt_id] for s in sequences})
        return sequences

    def detach(self, request_id: str) -> Sequence | None:
        """The sequence whose turn (engine request `request_id`) just ended, out of the engine until `attach`."""
        seq = self._by_request.pop(request_id, None)
        if seq is not None:
            self._waiting[id(seq)] = self._group_of.pop(request_id)
            seq.turns += 1
        return seq

    def observe(self, seq: Sequence, token_ids) -> None:
        """Append the environment's tokens: context, never trained (mask 0, log-prob 0, version -1)."""
        seq.tokens.extend(int(t) for t in token_ids)
        seq.logprobs.extend([0.0] * len(token_ids))
        seq.versions.extend([-1] * len(token_ids))
        seq.mask.extend([0] * len(token_ids))

    def attach(self, seq: Sequence) -> str:
        """A fresh engine request for the sequence's next turn; returns its id."""
        group = self._waiting.pop(id(seq))
        seq.request_id = seq.engine_request = self._new_id(seq.prompt)
        seq.turn_start = len(seq.tokens)
        self._index(seq, group)
        return seq.request_id

    def finish(self, seq: Sequence, finish_reason: str, end_reason: str, reward: float | None = None
               ) -> Group | None:
        """End a waiting episode; its group if this completed it (None also for a group already dropped)."""
        group = self._waiting.pop(id(seq), None)
        if group is None:
            return None
        seq.finish_reason, seq.end_reason, seq.reward = finish_reason, end_reason, reward
        return self._complete(group)

    def waiting(self) -> int:
        """Episodes out of the engine, waiting for their environment."""
        return len(self._waiting)

    def restart(self, seq: Sequence) -> str:
        """Give a running sequence a fresh request id (its old request is aborted by the caller); returns the old id."""
        old = seq.request_id
        if seq.engine_request != old:
            raise ValueError(f"{old} shares its engine request with its group: it cannot restart alone")
        group = self._group_of.pop(old)
        del self._by_request[old]
        seq.request_id = seq.engine_request = self._new_id(seq.prompt)
        self._index(seq, group)
        return old

    def running(self) -> list[Sequence]:
        return list(self._by_request.values())

    def __len__(self) -> int:
        """Sequences still generating."""
        return len(self._by_request)

    def drop_all(self) -> list[str]:
        """Forget everything (the run is over); returns the engine requests to abort."""
        ids = list(dict.fromkeys(s.engine_request for s in self._by_request.values()))
        self._by_request.clear()
        self._group_of.clear()
        self._waiting.clear()
        self.groups.clear()
        return ids

    def _new_id(self, prompt: Prompt) -> str:
        return f"p{prompt.prompt_id}-r{next(self._ids)}"

    def _index(self, seq: Sequence, group: Group) -> None:
        self._by_request[seq.request_id] = seq
        self._group_of[seq.request_id] = group
