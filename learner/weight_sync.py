"""Weights from the learner to every actor: one collective broadcast group.

The group is built *stateless*: its own TCP store on `net.store_port`, its own
`ProcessGroupGloo` / `ProcessGroupNCCL` object, never `init_process_group`, so
it cannot collide with the default process group or vLLM's. The learner is
rank 0, actor i is rank i + 1.

Protocol of one sync (learner side, `publish` + `WeightBroadcaster`):
  1. one small `weights` message per actor on the sync socket (ROUTER ->
     each actor's DEALER): version + bucket layout (dtype, names, shapes);
  2. one broadcast per bucket: parameters in model.dtype, flattened per
     dtype, buckets capped at `sync.bucket_mb` — a few large collectives,
     never one per tensor.
With a sharded learner every learner rank runs `publish`: each parameter is
all-gathered from its shards (a collective of the learner ranks) one at a
time and copied into the bucket rank 0 is filling, so no rank ever holds
more than one bucket plus one whole tensor beyond its shards.
Each actor's receiver thread (actors/weight_receiver.py) is always waiting on
its socket, so the learner waits only for the transfer itself. Every
collective runs with the group's deadline (`sync.timeout_s`); a missed
deadline raises and fails the run loudly instead of hanging.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import zmq

from buffer.curve import CurveKeys, secure_server
from buffer.protocol import ProtocolError, decode, encode, require
from buffer.transport import HWM

BUCKET_BYTES = 256 * 2**20


def hello_identity(actor_id: int) -> bytes:
    """The socket identity of actor `actor_id`'s weight receiver: its hello must come from it."""
    return f"actor-{actor_id}-weights".encode()


def make_group(host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float):
    """A process group not registered with torch.distributed (use its own `.broadcast`)."""
    timeout = timedelta(seconds=timeout_s)
    store = torch.distributed.TCPStore(host, port, world_size, is_master=(rank == 0), timeout=timeout,
                                       wait_for_workers=True, use_libuv=True)
    store = torch.distributed.PrefixStore("asyncor/weights", store)
    if backend == "nccl":
        return torch.distributed.ProcessGroupNCCL(store, rank, world_size), store
    return torch.distributed.ProcessGroupGloo(store, rank, world_size, timeout), store


def pick_backend(setting: str, device: torch.device) -> str:
    if setting != "auto":
        return setting
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass
class Bucket:
    dtype: torch.dtype
    names: list[str]
    shapes: list[list[int]]

    @property
    def numel(self) -> int:
        return sum(_numel(s) for s in self.shapes)

    def to_wire(self) -> dict:
        return {"dtype": str(self.dtype).removeprefix("torch."), "names": self.names, "shapes": self.shapes}

    @staticmethod
    def from_wire(obj: dict) -> "Bucket":
        return Bucket(getattr(torch, obj["dtype"]), list(obj["names"]), [list(s) for s in obj["shapes"]])


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def plan_buckets(specs: list[tuple[str, list[int], torch.dtype]], bucket_bytes: int = BUCKET_BYTES) -> list[Bucket]:
    """Group (name, shape, dtype) by dtype (first-seen order), splitting a dtype's run at `bucket_bytes`."""
    by_dtype: dict[torch.dtype, list[tuple[str, list[int]]]] = {}
    for name, shape, dtype in specs:
        by_dtype.setdefault(dtype, []).append((name, list(shape)))
    buckets: list[Bucket] = []
    for dtype, items in by_dtype.items():
        current, size = Bucket(dtype, [], []), 0
        for name, shape in items:
            nbytes = _numel(shape) * dtype.itemsize
            if current.names and size + nbytes > bucket_bytes:
                buckets.append(current)
                current, size = Bucket(dtype, [], []), 0
            current.names.append(name)
            current.shapes.append(shape)
            size += nbytes
        buckets.append(current)
    return buckets


def unflatten(bucket: Bucket, flat: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    out, offset = [], 0
    for name, shape in zip(bucket.names, bucket.shapes):
        n = _numel(shape)
        out.append((name, flat[offset: offset + n].view(shape)))
        offset += n
    return out


class WeightBroadcaster:
    """Learner side: rank 0 of the broadcast group plus the announcement socket."""

    def __init__(self, ctx: zmq.Context, host: str, sync_port: int, store_port: int, num_actors: int,
                 backend: str, timeout_s: float, device: torch.device, bind: str | None = None,
                 keys: CurveKeys | None = None):
        """`host`: the address actors reach this learner at (the store's address too); `bind`: the IP or
        interface the announcement socket binds (default `host`); `keys`: the run's CURVE keys, if any."""
        self.sock = ctx.socket(zmq.ROUTER)
        secure_server(self.sock, keys)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, HWM)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.bind(f"tcp://{bind or host}:{sync_port}")
        self.timeout_s = timeout_s
        self.device = device
        # Every actor says hello before joining the group, so once the group
        # exists every hello is already queued on the socket.
        self.pg, self._store = make_group(host, store_port, 0, num_actors + 1, backend, timeout_s)
        self.actors: dict[int, bytes] = {}
        self.refused = 0  # messages on the announcement port that are not an actor's hello
        deadline = time.monotonic() + timeout_s
        while len(self.actors) < num_actors:
            if not self.sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                raise TimeoutError(f"only {len(self.actors)}/{num_actors} actors said hello to the weight sync")
            frames = self.sock.recv_multipart()
            try:
                self._hello(frames[0], frames[-1], num_actors)
            except ProtocolError:
                self.refused += 1  # anything can reach this port: a bad message is refused, never fatal

    def _hello(self, ident: bytes, raw: bytes, num_actors: int) -> None:
        msg = decode(raw, 1 << 16)
        actor_id = require(msg.body, "actor_id", int)
        if msg.type != "hello" or not 0 <= actor_id < num_actors or ident != hello_identity(actor_id):
            raise ProtocolError("bad_value", f"not a hello from actor {actor_id}'s weight receiver")
        self.actors[actor_id] = ident

    def announce(self, version: int, buckets: list[Bucket]) -> None:
        """Tell every actor a broadcast of `version` follows, within `sync.timeout_s`: an actor whose receiver
        stopped reading (its queue full) or is gone becomes an error naming it, never a hang."""
        announcement = encode("weights", {"version": version, "buckets": [b.to_wire() for b in buckets]})
        deadline = time.monotonic() + self.timeout_s
        for actor_id, ident in self.actors.items():
            while True:
                try:
                    self.sock.send_multipart([ident, announcement], zmq.NOBLOCK)
                    break
                except zmq.Again:  # its queue is full: it is not reading
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"actor {actor_id}'s weight receiver took no announcement (version "
                                           f"{version}) within sync.timeout_s = {self.timeout_s:g} s") from None
                    time.sleep(0.005)
                except zmq.ZMQError as exc:  # EHOSTUNREACH (ROUTER_MANDATORY): its connection is gone
                    raise RuntimeError(f"actor {actor_id}'s weight receiver is gone (announcing version "
                                       f"{version}): {exc}") from None

    def send(self, flat: torch.Tensor) -> None:
        self.pg.broadcast(flat.to(self.device), 0).wait(timedelta(seconds=self.timeout_s))

    def close(self) -> None:
        self.sock.close(linger=0)


def publish(named: list[tuple[str, torch.Tensor]], dtype: torch.dtype, bucket_bytes: int,
            broadcaster: WeightBroadcaster | None, version: int, device: torch.device) -> float:
    """Send the learner's weights (`named`: its state dict, sharded or not) to every actor as `version`.

    Every learner rank calls this with the same `named` (gathering a sharded parameter is a collective); rank 0
    passes its broadcaster, the others None. Floating-point tensors travel in `dtype` (model.dtype). Returns
    the seconds spent gathering and broadcasting."""
    from learner.parallel import full_tensor

    specs = [(n, list(t.shape), dtype if t.is_floating_point() else t.dtype) for n, t in named]
    buckets = plan_buckets(specs, bucket_bytes)
    if broadcaster is not None:
        broadcaster.announce(version, buckets)
    tensors = dict(named)
    start = time.perf_counter()
    for b in buckets:
        flat = torch.empty(b.numel, dtype=b.dtype, device=device) if broadcaster is not None else None
        offset = 0
        for name in b.names:
            whole = full_tensor(tensors[name].detach())  # all-gather of one parameter on every rank
            if flat is not None:
                flat[offset:offset + whole.numel()].copy_(whole.reshape(-1))
            offset += whole.numel()
            del whole
        if broadcaster is not None:
            broadcaster.send(flat)
    return time.perf_counter() - start
