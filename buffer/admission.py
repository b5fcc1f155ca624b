"""Admission: which prompts go to which actor, and when.

The buffer's side of the actor conversation that is not a group: hellos, grant requests, grants given back
and goodbyes. A grant is at most the staleness budget's room (buffer/staleness.py) of prompts from the
stream (buffer/prompts.py), none of them already in flight, each recorded as a `PromptGrant` until its
group is accepted or refused (buffer/ingest.py), it is given back, or its actor says bye or restarts. A
request that finds no room may be held (`hold_s`): it is answered the moment room appears (a new version,
a slot given back; the loop checks every 0.05 s) or with `wait` when the hold ends, one held request per
actor socket (a newer one replaces it, unanswered). After the learner's `done` every request is answered
`stop`.

A second hello from an actor id is a restart: the dead incarnation's grants go back to the front of the
stream, its held request is dropped, and the new incarnation numbers its groups past everything seen from
its predecessors (`Welcome.seq_start`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from asyncor.buffer.online_filter import OnlineFilter
from asyncor.buffer.prompts import PromptStream
from asyncor.buffer.staleness import StalenessBudget
from asyncor.configs.stages import Stage, stage_at
from asyncor.tasks.task import Problem
from asyncor.wire.arrays import pack_array
from asyncor.wire.envelope import Message, ProtocolError
from asyncor.wire.messages import Ack, GrantedPrompt, GrantReply, Sampling, Stop, WaitReply, Welcome

SEQ_GAP = 1 << 16  # a restarted actor numbers its groups this far past its last incarnation's highest seen


@dataclass
class PromptGrant:
    """What an actor was granted for one prompt: its group must match it."""

    actor_id: int
    problem: Problem
    group_size: int
    max_tokens: int


@dataclass
class HeldRequest:
    request: Message
    actor_id: int
    wanted: int
    until: float  # monotonic


class Admission:
    def __init__(self, config, prompts: PromptStream, budget: StalenessBudget, log):
        self.config = config
        self.prompts = prompts
        self.budget = budget
        self.log = log
        self.granted: dict[int, PromptGrant] = {}  # prompt id -> what was granted, until its group arrives
        self.held: dict[bytes, HeldRequest] = {}  # actor socket -> its held grant request
        self.actors_seen: set[int] = set()
        self.actors_done: set[int] = set()
        self.actor_stats: dict[int, dict] = {}  # what each actor said in its goodbye
        self.actor_restarts: dict[int, int] = {}  # actor id -> hellos after its first (restarts)
        self.returns_ignored = 0  # prompt ids in grant returns that freed nothing (repeated, or not this actor's)

    # ------------------------------------------------------------------ requests

    def hello(self, actor_id: int, highest_seq: int) -> Welcome:
        """`highest_seq`: the highest group number seen from this actor id (-1: none)."""
        restarted = actor_id in self.actors_seen
        if restarted:  # its earlier incarnation died: what it held goes back to the stream, served first
            self.restart(actor_id)
        self.actors_seen.add(actor_id)
        return Welcome(version=self.budget.version, restarted=restarted,
                       seq_start=highest_seq + 1 + SEQ_GAP if restarted else 0)

    def request(self, peer: bytes, request: Message, actor_id: int, wanted: int, hold_s: float,
                done: bool) -> GrantReply | WaitReply | Stop | None:
        """The answer to a grant request, or None when it is held (answered later by `serve_held`)."""
        if wanted > self.config.buffer.max_groups:
            raise ProtocolError("bad_value", f"max_prompts {wanted} is not in [0, buffer.max_groups]")
        self.actors_seen.add(actor_id)
        if done:
            return Stop()
        grant = self.grant(actor_id, wanted)
        if grant is not None:
            return grant
        if wanted and hold_s:
            self.held[peer] = HeldRequest(request, actor_id, wanted, time.monotonic() + hold_s)
            return None
        return WaitReply()

    def grant(self, actor_id: int, wanted: int) -> GrantReply | None:
        """Up to `wanted` prompts if the staleness budget has room; None when there is nothing to grant."""
        n = self.budget.grant(wanted)
        if n == 0:
            return None
        problems = self.prompts.take(n, busy=self.granted.keys())
        if len(problems) < n:  # every other prompt is in flight: the slots not used go back
            self.budget.on_returned(n - len(problems))
            if not problems:
                return None
        stage = stage_at(self.config, self.budget.version)
        for p in problems:
            self.granted[p.id] = PromptGrant(actor_id, p, stage.group_size, stage.max_response_tokens)
        # The current stage's sampling: actors switch length and group size without restarting.
        return GrantReply(min_version=self.budget.min_version_for_grant(),
                          prompts=[GrantedPrompt(prompt_id=p.id, token_ids=pack_array(p.prompt_ids), kind=p.kind,
                                                 reference=p.reference) for p in problems],
                          sampling=Sampling(n=stage.group_size, max_tokens=stage.max_response_tokens,
                                            stage=stage.index))

    def serve_held(self, done: bool) -> list[tuple[bytes, Message, GrantReply | WaitReply | Stop]]:
        """Answers owed to held requests now: a grant as soon as there is room, `stop` once the learner is
        done, `wait` when the hold ends."""
        now, answers = time.monotonic(), []
        for peer, held in list(self.held.items()):
            reply = Stop() if done else self.grant(held.actor_id, held.wanted)
            if reply is None and now >= held.until:
                reply = WaitReply()
            if reply is not None:
                answers.append((peer, held.request, reply))
                del self.held[peer]
        return answers

    def give_back(self, actor_id: int, prompt_ids: list[int]) -> Ack:
        """An actor returns grants it will not answer (its weights never arrived). Each of its own grants named
        is freed once, however often it is named; the other ids (named twice, no longer granted: answered or
        returned already, as after a restart or a resume, or granted to another actor) are ignored, counted
        (`returns_ignored`) and logged. Always acknowledged: an honest actor can send any of these."""
        own = {i for i in prompt_ids if i in self.granted and self.granted[i].actor_id == actor_id}
        ignored = len(prompt_ids) - len(own)
        if ignored:
            self.returns_ignored += ignored
            self.log.warning("grant_return_ignored", actor=actor_id, ignored=ignored, released=len(own),
                             total_ignored=self.returns_ignored)
        self.release(sorted(own))
        return Ack()

    def bye(self, actor_id: int, stats: dict) -> Ack:
        self.actors_done.add(actor_id)
        self.actor_stats[actor_id] = stats
        self.release(self.held_by(actor_id))
        return Ack()

    def restart(self, actor_id: int) -> None:
        """Give back an earlier incarnation's grants and forget its held request."""
        held = self.held_by(actor_id)
        self.release(held)
        for peer, request in list(self.held.items()):
            if request.actor_id == actor_id:
                del self.held[peer]
        self.actor_restarts[actor_id] = self.actor_restarts.get(actor_id, 0) + 1
        self.log.info("actor_restarted", actor=actor_id, grants_returned=len(held), version=self.budget.version)

    # ------------------------------------------------------------------ grants

    def held_by(self, actor_id: int) -> list[int]:
        return [i for i, g in self.granted.items() if g.actor_id == actor_id]

    def answered(self, prompt_id: int) -> None:
        """Its group was accepted: the grant is done (its slot now counts as an accepted group)."""
        del self.granted[prompt_id]

    def release(self, prompt_ids: list[int]) -> None:
        """Unused grants: free their admission slots and serve their prompts again first (each once: an id
        named twice, or not granted, frees nothing more)."""
        ids = [i for i in dict.fromkeys(prompt_ids) if i in self.granted]
        self.budget.on_returned(len(ids))
        self.prompts.give_back([self.granted.pop(i).problem for i in ids])

    # ------------------------------------------------------------------ stages

    def enter_stage(self, stage: Stage, online_filter: OnlineFilter) -> int:
        """A stage boundary: prompts solved every time during the stage that ended leave the pool (online
        filtering, algo.online_filter); returns how many were removed."""
        solved = online_filter.end_stage()
        removed = self.prompts.remove(solved) if self.config.algo.online_filter else 0
        self.log.info("stage", index=stage.index, start_step=stage.start_step, max_tokens=stage.max_response_tokens,
                      group_size=stage.group_size, prompts_per_step=stage.prompts_per_step,
                      solved_every_time=len(solved), removed=removed, pool=self.prompts.remaining)
        return removed
