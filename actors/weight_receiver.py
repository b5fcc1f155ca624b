"""The actor's weight-receiver thread: always ready to join the learner's broadcast.

Producer: the learner (an announcement on the sync socket, then one broadcast
per bucket). Consumer: the actor's generation loop, which takes the newest
staged weights at a chunk boundary (`take`) or waits for a version a grant
requires (`wait_for`). Only the newest staged version is kept: an older
staged set not yet loaded is replaced, never queued. Blocking: the thread
blocks in the collective only after an announcement; its socket poll has a
short timeout so `stop()` ends it promptly. A failed collective (deadline
passed, learner gone) is recorded in `error` and re-raised by the
generation loop, which fails the actor loudly.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import torch
import zmq

from buffer.curve import CurveKeys, secure_client
from buffer.protocol import decode, encode, require
from buffer.transport import HWM
from learner.weight_sync import Bucket, hello_identity, make_group, unflatten


class StagedWeights:
    def __init__(self, version: int, tensors: list[tuple[str, torch.Tensor]], recv_s: float):
        self.version = version
        self.tensors = tensors
        self.recv_s = recv_s
        self.staged_at = time.perf_counter()  # when the broadcast finished (weights-to-first-token latency)


class WeightReceiver(threading.Thread):
    def __init__(self, actor_id: int, host: str, sync_port: int, store_port: int, world_size: int,
                 backend: str, timeout_s: float, device: torch.device, keys: CurveKeys | None = None):
        super().__init__(name=f"weight-receiver-{actor_id}", daemon=True)
        self.keys = keys  # the run's CURVE keys (net.auth = "curve"), else None
        self.actor_id = actor_id
        self.rank = actor_id + 1
        self.args = (host, sync_port, store_port, world_size, backend, timeout_s)
        self.device = device
        self.timeout_s = timeout_s
        self._staged: StagedWeights | None = None
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.received_versions: list[int] = []

    def run(self) -> None:
        host, sync_port, store_port, world_size, backend, timeout_s = self.args
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.IDENTITY, hello_identity(self.actor_id))  # the learner checks it against actor_id
        secure_client(sock, self.keys)
        try:
            sock.connect(f"tcp://{host}:{sync_port}")
            sock.send(encode("hello", {"actor_id": self.actor_id}))
            pg, _store = make_group(host, store_port, self.rank, world_size, backend, timeout_s)
            self.ready.set()
            while not self._stopping.is_set():
                if not sock.poll(200):
                    continue
                msg = decode(sock.recv(), 1 << 24)
                self._receive(pg, require(msg.body, "version", int), require(msg.body, "buckets", list))
        except BaseException as exc:  # surfaced to the generation loop
            self.error = exc
            with self._cond:
                self._cond.notify_all()
        finally:
            sock.close(linger=0)

    def _receive(self, pg, version: int, buckets_wire: list) -> None:
        start = time.perf_counter()
        tensors = []
        for obj in buckets_wire:
            bucket = Bucket.from_wire(obj)
            flat = torch.empty(bucket.numel, dtype=bucket.dtype, device=self.device)
            pg.broadcast(flat, 0).wait(timedelta(seconds=self.timeout_s))
            tensors.extend(unflatten(bucket, flat))
        staged = StagedWeights(version, tensors, time.perf_counter() - start)
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
