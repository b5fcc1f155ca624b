"""The learner's side of the weight sync: membership, announcements, one broadcast per bucket.

Conversation on the announcement socket (learner ROUTER <-> each actor receiver's DEALER `actor<i>/weights`,
msgpack frames; wire/messages.py):

    actor   -> learner  receiver_hello {actor_id}         on start, on every restart (same identity) and
                                                          after a failed collective (sync/receiver.py)
    learner -> actor    probe {epoch}                     "are you there?" before a new group is made
    actor   -> learner  here {actor_id, epoch}            the answer
    learner -> actor    join {epoch, rank, world_size}    build epoch's group (sync/group.py) now
    learner -> actor    weights {epoch, version, buckets}  one broadcast per bucket follows

Membership. The first group is made once all `actors.count` actors said hello (within `sync.timeout_s`;
past it the constructor raises TimeoutError); its probe waits `sync.timeout_s` for the answers. Afterwards a group is rebuilt (`regroup`) before the next
broadcast whenever an actor said hello again (a restarted actor: it gets the current weights on joining)
or the last sync failed: an announcement that cannot be delivered (the actor's connection is gone, or its
queue stayed full past the deadline), a group that did not form, or a collective that raised or passed
`sync.timeout_s` (an actor died mid-transfer). A regroup probes every actor and builds the group from the
members and newcomers that answer within `probe_s` (`PROBE_S`, or `sync.timeout_s` if shorter); the silent
ones are dropped from the group. Training never waits for a dead actor: at worst one deadline, then the
live ones get the weights again.

Coming back. A dropped actor is probed again at every later sync (once, without waiting: a dead one costs
nothing), and any answer from an actor outside the group (to that probe, or a late answer to the probe that
dropped it) counts as a hello: it is in the next group. So an actor that was frozen or slow while it was
not inside a broadcast (it holds a group that no longer exists and cannot notice) is back at the first
sync after it answers. The receiver has its own bound too (sync/receiver.py): a probe not followed by a
`join` within its `join_wait_s`, or an announcement of a newer group, makes it leave its group and say hello.

Failures are counted, logged with the actors they concern, and only fatal when `sync.max_failures`
consecutive syncs fail (something other than one actor is wrong). Messages on this port that are not an
actor's hello or answer are counted (`refused`) and not answered, never fatal: anything can reach the port.

Concurrency. Producers: the learner's rank 0 (learner/weight_sync.py `publish`, on its training thread)
of announcements and weights, which the actors' receivers consume; the receivers of hellos and answers,
which this object reads only when the learner calls in (`needs_sync`, `begin`): nothing here runs on a
thread of its own. Blocking:
the constructor until every actor said hello (at most `sync.timeout_s`) and the first group formed;
`regroup` up to the probe deadline plus the group's formation (at most `sync.timeout_s`); `begin` up to
`sync.timeout_s` delivering the announcement; `send` up to `sync.timeout_s` per bucket. Dropped: actors
that do not answer a probe (until they answer a later one), announcements and probes to gone actors, answers
from actors already in the group or already joining, and refused messages. Timeout: the sync fails as above.
"""

from __future__ import annotations

import time
from datetime import timedelta

import torch

from asyncor.wire import messages as wire
from asyncor.wire.curve import CurveKeys
from asyncor.wire.envelope import ProtocolError, decode
from asyncor.wire.messages import encode_message
from asyncor.wire.transport import Delivery, Transport, endpoint
from asyncor.sync.buckets import Bucket
from asyncor.sync.group import abandon, hello_identity, make_group, open_store
from asyncor.telemetry import log as tlog

PROBE_S = 10.0  # how long a regroup waits for live actors to answer (they answer within ~0.2 s)
MAX_INBOUND_BYTES = 1 << 16


class WeightBroadcaster:
    """Rank 0 of the broadcast group, and the announcement socket every actor's receiver talks to."""

    def __init__(self, transport: Transport, host: str, sync_port: int, store_port: int, num_actors: int,
                 backend: str, timeout_s: float, device: torch.device, bind: str | None = None,
                 keys: CurveKeys | None = None, max_failures: int = 3, probe_s: float = PROBE_S):
        """`host`: the address actors reach this learner at (the store's address too); `bind`: the IP or
        interface the announcement socket binds (default `host`); `keys`: the run's CURVE keys, if any;
        `probe_s`: how long a regroup waits for answers (at most `timeout_s`)."""
        self.log = tlog.get("learner")
        # With CURVE a restarted actor's connection replaces its old one at once (wire/zeromq.py).
        self.listener = transport.listen(endpoint(bind or host, sync_port), keys)
        self.num_actors = num_actors
        self.backend = backend
        self.timeout_s = timeout_s
        self.device = device
        self.max_failures = max_failures
        self.probe_s = min(probe_s, timeout_s)
        self.store = open_store(host, store_port, True, timeout_s)
        self.members: dict[int, bytes] = {}  # the current group's actors (rank = 1 + index in id order)
        self.joining: dict[int, bytes] = {}  # said hello since the current group was made
        self.pg = None
        self.epoch = 0
        self.dirty = True  # the group must be (re)made before the next broadcast
        self.failures = 0  # consecutive failed syncs
        self.stats = {"regroups": 0, "failed_syncs": 0, "actors_dropped": 0, "rejoined": 0}
        self.refused = 0  # messages on the announcement port that are not an actor's
        deadline = time.monotonic() + timeout_s
        while len(self.joining) < num_actors:
            if not self.listener.readable(max(0.001, deadline - time.monotonic())):
                raise TimeoutError(f"only {len(self.joining)}/{num_actors} actors said hello to the weight sync "
                                   f"within sync.timeout_s = {timeout_s:g} s")
            self._handle(*self.listener.recv())
        # Every actor has just said hello, and a process that has just started can be slow to answer on a busy
        # host: the first group waits the whole sync.timeout_s for the answers, not probe_s.
        self.regroup(probe_s=timeout_s)
        if self.pg is None:
            raise RuntimeError(f"could not make the first weight-sync group with all {num_actors} actors")

    @property
    def actors(self) -> dict[int, bytes]:
        """The actors of the current group (actor id -> socket identity)."""
        return dict(self.members)

    def metrics(self) -> dict:
        """sync/actors (in the group now), sync/regroups, sync/failed_syncs, sync/actors_dropped, sync/rejoined."""
        return {"sync/actors": len(self.members), **{f"sync/{k}": v for k, v in self.stats.items()}}

    # ------------------------------------------------------------------ inbound

    def _handle(self, ident: bytes, raw: bytes, answers: dict[int, bytes] | None = None) -> None:
        """One inbound message: a hello joins; a `here` answers the current probe (`answers`: a regroup is
        waiting for them), or, from an actor outside the group, joins as a hello does; the rest is refused."""
        try:
            msg = decode(raw, MAX_INBOUND_BYTES)
            kind = {wire.ReceiverHello.TYPE: wire.ReceiverHello, wire.Here.TYPE: wire.Here}.get(msg.type)
            if kind is None:
                raise ProtocolError("unknown_type", f"{msg.type!r} is not a weight-receiver message")
            m = wire.parse(msg, kind)
            actor_id = m.actor_id
            if not actor_id < self.num_actors or ident != hello_identity(actor_id):
                raise ProtocolError("bad_value", f"not from actor {actor_id}'s weight receiver")
            if isinstance(m, wire.ReceiverHello):
                self._admit(actor_id, ident, "hello")
            elif answers is not None and m.epoch == self.epoch:
                answers[actor_id] = ident
            elif actor_id not in self.members:
                # Alive but out of the group: it missed the probe that dropped it, or answers a re-probe.
                self._admit(actor_id, ident, f"answer to the probe of epoch {m.epoch}")
        except ProtocolError:
            self.refused += 1

    def _admit(self, actor_id: int, ident: bytes, how: str) -> None:
        """Actor `actor_id` is alive and wants the weights: it is in the next group (made before the next sync)."""
        if actor_id not in self.joining and self.epoch > 0:
            self.stats["rejoined"] += 1
            self.log.info("sync_actor_rejoined", actor=actor_id, how=how)
        self.joining[actor_id] = ident

    def drain(self) -> None:
        """Take every waiting message (hellos of restarted actors) without blocking."""
        while self.listener.readable(0):
            self._handle(*self.listener.recv())

    def needs_sync(self) -> bool:
        """True when the actors must get the current weights again: a sync failed, or an actor (re)joined."""
        self.drain()
        return self.dirty or bool(self.joining)

    # ------------------------------------------------------------------ membership

    def _send(self, ident: bytes, raw: bytes, deadline: float) -> bool:
        """Deliver within the deadline; False when the actor's connection is gone or its queue stayed full."""
        while True:
            delivery = self.listener.send(ident, raw)
            if delivery is Delivery.FULL and time.monotonic() <= deadline:  # not reading (yet): try again
                time.sleep(0.005)
                continue
            return delivery is Delivery.SENT

    def _drop(self, actor_ids, why: str) -> None:
        for a in actor_ids:
            self.members.pop(a, None)
            self.joining.pop(a, None)
        if actor_ids:
            self.stats["actors_dropped"] += len(actor_ids)
            self.log.warning("sync_actors_dropped", actors=sorted(actor_ids), why=why)

    def _reprobe(self, probe: bytes, skip) -> None:
        """Probe every actor outside `skip` once, without waiting: a dropped actor that is alive answers, and its
        answer brings it back (`_handle`); one that is gone or not reading costs nothing."""
        for actor_id in range(self.num_actors):
            if actor_id not in skip:
                self.listener.send(hello_identity(actor_id), probe)

    def regroup(self, probe_s: float | None = None) -> None:
        """Make a new group from the members and newcomers that answer a probe within `probe_s` (default the
        broadcaster's), and dropped actors that do."""
        if self.pg is not None:
            abandon(self.pg)
        self.pg = None
        self.epoch += 1
        self.stats["regroups"] += 1
        candidates = {**self.members, **self.joining}
        self.joining = {}
        probe = encode_message(wire.Probe(epoch=self.epoch))
        deadline = time.monotonic() + (self.probe_s if probe_s is None else probe_s)
        unreachable = [a for a, ident in candidates.items() if not self._send(ident, probe, deadline)]
        self._reprobe(probe, candidates)  # not waited for: answered in time, they are in the group too
        awaited = set(candidates) - set(unreachable)
        answers: dict[int, bytes] = {}
        while awaited - answers.keys() and time.monotonic() < deadline:
            if self.listener.readable(max(0.001, deadline - time.monotonic())):
                self._handle(*self.listener.recv(), answers=answers)
        # An actor that restarted during the probe said hello instead: it is waiting too.
        answers.update(self.joining)
        self.joining = {}
        self._drop([a for a in candidates if a not in answers], "no answer to the regroup probe")
        self.members = dict(sorted(answers.items()))
        world = len(self.members) + 1
        for rank, (actor_id, ident) in enumerate(self.members.items(), start=1):
            if not self._send(ident, encode_message(wire.Join(epoch=self.epoch, rank=rank, world_size=world)),
                              deadline):
                self._fail(f"actor {actor_id} left before joining epoch {self.epoch}", [actor_id])
                return
        if self.members:
            try:
                self.pg = make_group(self.store, self.epoch, 0, world, self.backend, self.timeout_s)
            except Exception as exc:  # an actor died while the group formed (gloo/NCCL raise RuntimeError)
                self._fail(f"epoch {self.epoch}'s group did not form: {exc}", [])
                return
        self.dirty = False
        self.log.info("sync_group", epoch=self.epoch, actors=list(self.members), world_size=world)

    def _fail(self, why: str, gone: list[int]) -> None:
        """A sync failed: drop what is known dead, make a new group before the next broadcast; fatal only after
        `max_failures` failures in a row."""
        self._drop(gone, why)
        if self.pg is not None:
            abandon(self.pg)
        self.pg = None
        self.dirty = True
        self.failures += 1
        self.stats["failed_syncs"] += 1
        self.log.warning("sync_failed", why=why, consecutive=self.failures, max_failures=self.max_failures)
        if self.failures >= self.max_failures:
            raise RuntimeError(f"weight sync failed {self.failures} times in a row (sync.max_failures = "
                               f"{self.max_failures}); last: {why}")

    # ------------------------------------------------------------------ one sync

    def begin(self, version: int, buckets: list[Bucket]) -> bool:
        """Make the group if it must be made, then announce `version`. False: nothing to send to (no live actor,
        or the sync failed and was recorded); the caller still takes part in gathering, and skips `send`."""
        self.drain()
        if self.dirty or self.joining:
            self.regroup()
        else:  # are the dropped actors back? (their answers are taken before the next sync)
            self._reprobe(encode_message(wire.Probe(epoch=self.epoch)), self.members)
        if self.pg is None:
            return False
        announcement = encode_message(wire.Announcement(epoch=self.epoch, version=version,
                                                        buckets=[b.to_wire() for b in buckets]))
        deadline = time.monotonic() + self.timeout_s
        gone = [a for a, ident in self.members.items() if not self._send(ident, announcement, deadline)]
        if gone:
            self._fail(f"actors {gone} took no announcement of version {version} within sync.timeout_s = "
                       f"{self.timeout_s:g} s (gone, or not reading)", gone)
            return False
        return True

    def send(self, flat: torch.Tensor) -> bool:
        """One bucket to every member; False (recorded) when the collective failed or passed its deadline."""
        try:
            self.pg.broadcast(flat.to(self.device), 0).wait(timedelta(seconds=self.timeout_s))
            return True
        except Exception as exc:  # gloo/NCCL raise RuntimeError subclasses; a peer's death or the deadline
            self._fail(f"broadcast to actors {list(self.members)} failed: {exc}", [])
            return False

    def done(self) -> None:
        """The whole sync went through."""
        self.failures = 0

    def close(self) -> None:
        if self.pg is not None:
            abandon(self.pg)
            self.pg = None
        self.listener.close()
