"""The actor's weight-receiver thread: always ready to join the learner's broadcast.

Producer: the learner (sync/broadcaster.py: probes, `join`s, an announcement then one broadcast per bucket).
Consumer: the actor's generation loop (actors/rollout.py), which takes the newest staged weights (`take`)
and loads them between decoding steps (update_mode "inflight") or once the engine has drained ("chunk"),
or waits for a version a grant requires (`wait_for`). Only the newest staged version is kept: an older
staged set not yet taken is replaced, never queued, and a version received before (the learner sends the
current weights again after a regroup) is received but not staged again.

The thread says `receiver_hello`, answers probes (`here`; a probe of the epoch it answered last is not
answered again), builds each epoch's group when told to `join`, and receives. A failed collective or group
set-up (an actor died, the learner gave up on the group) is not fatal here: the thread says hello again,
and the learner makes a new group and sends the current weights again.

Left out. An actor that missed a probe while it was not inside a broadcast (frozen, or too slow to answer)
holds a group the learner has given up, and nothing in it fails. It finds out, leaves that group and says
hello again (`left_out`) when an announcement names a newer group than its own, or when `join_wait_s`
(default 2 x `sync.timeout_s`; the learner sends its joins within `sync.timeout_s` of its probe) passes
after it answered a probe of a newer epoch without being told to join it. The learner usually takes it
back sooner: an answer from an actor outside the group counts as a hello (sync/broadcaster.py). Without a
group the `sync.rejoin_timeout_s` clock runs, so an actor that is never taken back fails and is restarted.

A message that does not parse, or an announcement of an older group, is counted (`ignored`) and skipped.
With LoRA what arrives is an adapter (runtime/adapter.py): checked against the base the actor keeps and merged
into it here, off the generation loop; one with wrong names, shapes or values is counted (`refused`),
logged and never staged, and the engine keeps the version it has.
The thread only fails (`error`, re-raised by the generation loop through `take` / `wait_for`) after
`sync.rejoin_timeout_s` without a working group, or on anything else going wrong (the learner's queue full
when it says hello again).

Blocking: the thread blocks in a group's set-up after a `join` and in each bucket's broadcast after an
announcement, each at most `sync.timeout_s` (past it, that fails as any collective does: hello again);
otherwise its socket poll has a short timeout (0.2 s), so `stop()` ends it promptly unless it is inside
one of those. `wait_for` blocks the generation loop until the version is staged or its timeout passes
(then None). Sends never block: a full queue is an error.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import torch

from asyncor.wire import messages as wire
from asyncor.wire.curve import CurveKeys
from asyncor.wire.envelope import ProtocolError, decode
from asyncor.wire.messages import encode_message
from asyncor.wire.transport import Connection, Transport, endpoint
from asyncor.runtime.adapter import Adapter, AdapterRefused
from asyncor.sync.buckets import Bucket, unflatten
from asyncor.sync.group import abandon, hello_identity, make_group, open_store
from asyncor.runtime.names import actor_name
from asyncor.telemetry import log as tlog

MAX_ANNOUNCEMENT_BYTES = 1 << 24


class StagedWeights:
    def __init__(self, version: int, tensors: list[tuple[str, torch.Tensor]], recv_s: float, merge_s: float = 0.0,
                 sent_bytes: int = 0):
        self.version = version
        self.tensors = tensors
        self.recv_s = recv_s
        self.merge_s = merge_s  # LoRA: checking and merging the adapter into the base (this thread, not the loop's)
        self.sent_bytes = sent_bytes  # what crossed the broadcast for this version
        self.staged_at = time.perf_counter()  # when the broadcast finished (weights-to-first-token latency)


class WeightReceiver(threading.Thread):
    def __init__(self, transport: Transport, actor_id: int, host: str, sync_port: int, store_port: int, backend: str,
                 timeout_s: float, device: torch.device, keys: CurveKeys | None = None,
                 rejoin_timeout_s: float = 600.0, join_wait_s: float | None = None, adapter: Adapter | None = None):
        """`timeout_s`: sync.timeout_s (group set-up, each bucket); `rejoin_timeout_s`: sync.rejoin_timeout_s;
        `join_wait_s`: how long after answering a probe of a newer epoch the actor waits for its `join` before
        it concludes it was left out (None: 2 x `timeout_s`); `adapter` (LoRA, runtime/adapter.py): what arrives
        is an adapter, checked and merged into the kept base here before it is staged."""
        super().__init__(name=f"{actor_name(actor_id)}/weights", daemon=True)
        self.transport = transport
        self.keys = keys  # the run's CURVE keys (net.auth = "curve"), else None
        self.actor_id = actor_id
        self.args = (host, sync_port, store_port, backend, timeout_s)
        self.device = device
        self.adapter = adapter
        self.timeout_s = timeout_s
        self.rejoin_timeout_s = rejoin_timeout_s
        self.join_wait_s = 2 * timeout_s if join_wait_s is None else join_wait_s
        self.log = tlog.get(actor_name(actor_id))
        self._staged: StagedWeights | None = None
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self.ready = threading.Event()  # set once the first group is made
        self.error: BaseException | None = None
        self.received_versions: list[int] = []
        self.stats = {"groups": 0, "failed": 0, "ignored": 0, "left_out": 0, "refused": 0}
        self._pg = None
        self._epoch = -1
        self._answered = -1  # the epoch of the last probe answered
        self._join_due: float | None = None  # answered a probe of a newer epoch: its join is due by then

    def run(self) -> None:
        host, sync_port, store_port, backend, timeout_s = self.args
        # The identity the learner checks against the actor id of every message.
        conn = self.transport.connect(endpoint(host, sync_port), hello_identity(self.actor_id).decode(), self.keys)
        try:
            self._say(conn, wire.ReceiverHello(actor_id=self.actor_id))
            store = open_store(host, store_port, False, timeout_s)
            orphan_since: float | None = time.monotonic()  # without a working group since (None: in one)
            while not self._stopping.is_set():
                if orphan_since is not None and time.monotonic() - orphan_since > self.rejoin_timeout_s:
                    raise TimeoutError(f"no weight-sync group from the learner within sync.rejoin_timeout_s = "
                                       f"{self.rejoin_timeout_s:g} s")
                if conn.readable(0.2):
                    self._handle(conn, store, backend)
                if self._join_due is not None and time.monotonic() > self._join_due:
                    self._left_out(conn, f"no join within {self.join_wait_s:g} s of the probe of epoch "
                                         f"{self._answered}")
                if self._pg is not None:
                    orphan_since = None
                elif orphan_since is None:
                    orphan_since = time.monotonic()
        except BaseException as exc:  # surfaced to the generation loop
            self.error = exc
            with self._cond:
                self._cond.notify_all()
        finally:
            self._leave()
            conn.close()

    @staticmethod
    def _say(conn: Connection, message: wire.Body) -> None:
        if not conn.send(encode_message(message)):  # its queue is full: the learner has stopped reading
            raise RuntimeError(f"could not send {message.TYPE!r} to the learner (queue full)")

    def _handle(self, conn: Connection, store, backend: str) -> None:
        """One message from the learner; a failed collective leaves the group (the learner makes a new one)."""
        try:
            msg = decode(conn.recv(), MAX_ANNOUNCEMENT_BYTES)
            kind = {m.TYPE: m for m in (wire.Probe, wire.Join, wire.Announcement)}.get(msg.type)
            if kind is None:
                raise ProtocolError("unknown_type", f"{msg.type!r} is not a weight-sync message")
            m = wire.parse(msg, kind)
            if isinstance(m, wire.Probe):
                self._answer(conn, m.epoch)
            elif isinstance(m, wire.Join):
                self._join(store, m.epoch, m.rank, m.world_size, backend)
            elif m.epoch == self._epoch and self._pg is not None:
                self._receive(m.version, m.buckets)
            elif m.epoch > self._epoch:
                self._left_out(conn, f"an announcement of epoch {m.epoch}, whose group it was not told to join")
            else:
                self.stats["ignored"] += 1  # an announcement of an older group
        except ProtocolError as exc:
            self.stats["ignored"] += 1
            self.log.warning("sync_message_refused", reason=str(exc))
        except Exception as exc:  # a collective failed: an actor died, or the learner abandoned the group
            self.stats["failed"] += 1
            self.log.warning("sync_group_failed", epoch=self._epoch, error=str(exc)[:300])
            self._leave()
            self._say(conn, wire.ReceiverHello(actor_id=self.actor_id))  # asks for a regroup

    def _answer(self, conn: Connection, epoch: int) -> None:
        """`here` to a probe; a probe of a newer epoch than this actor's group is followed by a `join` if the
        learner takes it into that group, so from now on the join is due (`join_wait_s`)."""
        if epoch == self._answered:
            return  # a re-probe of the epoch it answered already (a backlog after a freeze): one answer is enough
        self._say(conn, wire.Here(actor_id=self.actor_id, epoch=epoch))
        self._answered = epoch
        if epoch > self._epoch:
            self._join_due = time.monotonic() + self.join_wait_s

    def _left_out(self, conn: Connection, why: str) -> None:
        """The learner made a group without this actor: leave the old one and ask to be taken back."""
        self.stats["left_out"] += 1
        self.log.warning("sync_left_out", epoch=self._epoch, why=why)
        self._join_due = None
        self._leave()
        self._say(conn, wire.ReceiverHello(actor_id=self.actor_id))

    def _join(self, store, epoch: int, rank: int, world_size: int, backend: str) -> None:
        if rank >= world_size or epoch <= self._epoch:
            raise ProtocolError("bad_value", f"join epoch {epoch} rank {rank} of {world_size}")
        if epoch >= self._answered:
            self._join_due = None
        self._leave()
        self._pg = make_group(store, epoch, rank, world_size, backend, self.timeout_s)
        self._epoch = epoch
        self.stats["groups"] += 1
        self.ready.set()
        self.log.info("sync_joined", epoch=epoch, rank=rank, world_size=world_size)

    def _leave(self) -> None:
        if self._pg is not None:
            abandon(self._pg)
        self._pg = None

    def _receive(self, version: int, buckets_wire: list[wire.BucketWire]) -> None:
        start = time.perf_counter()
        tensors = []
        for obj in buckets_wire:
            bucket = Bucket.from_wire(obj)
            flat = torch.empty(bucket.numel, dtype=bucket.dtype, device=self.device)
            self._pg.broadcast(flat, 0).wait(timedelta(seconds=self.timeout_s))
            tensors.extend(unflatten(bucket, flat))
        if self.received_versions and version <= self.received_versions[-1]:
            return  # sent again after a regroup: this actor had it already
        recv_s = time.perf_counter() - start
        sent = sum(t.numel() * t.element_size() for _, t in tensors)
        merge_s = 0.0
        if self.adapter is not None:
            try:
                tensors = self.adapter.merge(tensors)
            except AdapterRefused as exc:  # never loaded; the engine keeps the version it has
                self.stats["refused"] += 1
                self.log.warning("adapter_refused", version=version, reason=exc.reason, detail=exc.detail[:300],
                                 refused=self.stats["refused"])
                return
            merge_s = time.perf_counter() - start - recv_s
        staged = StagedWeights(version, tensors, recv_s, merge_s, sent)
        with self._cond:
            self._staged = staged
            self.received_versions.append(version)
            self._cond.notify_all()

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"weight receiver failed: {self.error!r}") from self.error

    def take(self) -> StagedWeights | None:
        """The newest staged weights not yet taken, if any."""
        self.check()
        with self._cond:
            staged, self._staged = self._staged, None
        return staged

    def wait_for(self, version: int, timeout_s: float) -> StagedWeights | None:
        """Block until weights of at least `version` are staged (or the deadline passes)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (self._staged is None or self._staged.version < version) and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
        self.check()
        return self.take()

    def stop(self) -> None:
        self._stopping.set()
