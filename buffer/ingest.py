"""Ingest: a scored group arrives from an actor's outbox, is checked, and is stored or dropped.

Every group is answered (buffer/service.py sends the answer):
  * `duplicate`: its (actor, seq) was answered before (at-least-once delivery: a resend after a lost ack);
  * refused (`ProtocolError`, counted by the service): a malformed group (wire/trajectory.py `parse_group`),
    or one that does not answer a grant its sender holds: another prompt, other tokens, another group size,
    responses over the length limit, token ids outside the model's vocabulary, a policy version newer than
    the learner's. A refused answer to the sender's own grant gives that grant back (the actor never sends
    it again, so its slot would stay taken), and the prompt is served again first;
  * `full`: the store has no room (the actor sends it again later);
  * `accepted`: the grant is done, the group counts as accepted (staleness budget), is tallied for the
    learner's rejection-sampling metrics and the online filter, and is stored; with rejection sampling in
    refill mode a group whose rewards are all equal is dropped here instead, counted, and its admission slot
    goes back so actors make a replacement.
"""

from __future__ import annotations

import numpy as np

from asyncor.buffer.admission import Admission
from asyncor.buffer.online_filter import OnlineFilter
from asyncor.buffer.rejection import GroupTally, uniform_kind
from asyncor.buffer.replay import ReplayStore
from asyncor.buffer.staleness import StalenessBudget
from asyncor.buffer.state import Counts
from asyncor.wire.envelope import ProtocolError
from asyncor.wire.messages import GroupAck
from asyncor.wire.trajectory import TrajectoryGroup, parse_group


class Ingest:
    def __init__(self, config, admission: Admission, store: ReplayStore, budget: StalenessBudget, tally: GroupTally,
                 online_filter: OnlineFilter, counts: Counts, vocab_size: int, max_group_size: int):
        self.config = config
        self.admission, self.store, self.budget = admission, store, budget
        self.tally, self.online_filter, self.counts = tally, online_filter, counts
        self.vocab_size = vocab_size
        self.max_group_size = max_group_size

    def group(self, body: dict, sender: int) -> GroupAck:
        """The answer to one group from actor `sender`'s socket; ProtocolError when it is refused."""
        group = None
        try:
            group = parse_group(body, max_group_size=self.max_group_size)
            if self.store.is_duplicate(group):
                self.counts.duplicates += 1
                return GroupAck(status="duplicate", seq=group.seq)
            self.check_against_grant(group, sender)
        except ProtocolError:
            self.release_bad_answer(group, sender)
            raise
        if self.store.is_full():
            return GroupAck(status="full", seq=group.seq)
        self.accept(group)
        return GroupAck(status="accepted", seq=group.seq)

    def check_against_grant(self, group: TrajectoryGroup, sender: int) -> None:
        """A group must answer a grant its sender holds: that prompt, the granted group size and length
        limit, tokens the model can embed, versions the learner has reached."""
        grant = self.admission.granted.get(group.prompt_id)
        if grant is None:
            raise ProtocolError("bad_value", f"prompt {group.prompt_id} was not granted (or already answered)")
        if group.actor_id != sender or grant.actor_id != sender:
            raise ProtocolError("bad_value", f"prompt {group.prompt_id} was granted to actor {grant.actor_id}")
        if not np.array_equal(group.prompt_ids, grant.problem.prompt_ids):
            raise ProtocolError("bad_value", f"prompt {group.prompt_id}: the tokens differ from the granted prompt")
        if len(group.responses) != grant.group_size:
            raise ProtocolError("bad_value", f"{len(group.responses)} responses, granted {grant.group_size}")
        for r in group.responses:
            newest = int(r.versions.max()) if r.versions is not None and len(r.versions) else r.min_version
            if newest > self.budget.version:  # no policy that new exists yet (its staleness would be negative)
                raise ProtocolError("bad_value", f"version {newest} is newer than the learner's {self.budget.version}")
            if len(r.token_ids) > grant.max_tokens:
                raise ProtocolError("bad_value", f"a response of {len(r.token_ids)} tokens, limit {grant.max_tokens}")
            if len(r.token_ids) and (int(r.token_ids.min()) < 0 or int(r.token_ids.max()) >= self.vocab_size):
                raise ProtocolError("bad_value", f"a token id outside the model's vocabulary [0, {self.vocab_size})")

    def release_bad_answer(self, group: TrajectoryGroup | None, sender: int) -> None:
        """A refused answer to a grant its sender holds frees the grant: the actor never sends a refused group
        again, so the admission slot would otherwise stay taken until the actor says bye (or restarts), and
        enough of them would stall the run. The prompt is served again first. A peer's grant is untouched."""
        grant = self.admission.granted.get(group.prompt_id) if group is not None else None
        if grant is not None and grant.actor_id == sender == group.actor_id:
            self.admission.release([group.prompt_id])

    def accept(self, group: TrajectoryGroup) -> None:
        self.admission.answered(group.prompt_id)
        self.counts.accepted += 1
        self.budget.on_group_accepted()
        self.tally.on_arrival(group)
        self.online_filter.observe(group.prompt_id, group.rewards)
        rejection = self.config.algo.rejection
        kind = uniform_kind(group) if rejection.enabled and rejection.refill else None
        if kind:
            # Refill mode: an all-equal group never enters the store; its admission slot goes back,
            # so actors make a replacement and batches stay full.
            self.store.mark_seen(group)
            self.budget.on_dropped(1)
            self.counts.uniform(kind, self.tally)
            return
        self.store.add(group)
        self.counts.max_stored = max(self.counts.max_stored, len(self.store))
