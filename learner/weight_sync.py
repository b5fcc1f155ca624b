"""Weights from the learner to every actor: one collective broadcast group.

The group is built *stateless*: its own TCP store on `net.store_port`, its own
`ProcessGroupGloo` / `ProcessGroupNCCL` object, never `init_process_group`, so
it cannot collide with the default process group or vLLM's. The learner is
rank 0, actor i is rank i + 1.

Protocol of one sync (learner side, `WeightBroadcaster.broadcast`):
  1. one small `weights` message per actor on the sync socket (ROUTER ->
     each actor's DEALER): version + bucket layout (dtype, names, shapes);
  2. one broadcast per bucket: parameters flattened per dtype, buckets capped
     at `bucket_bytes` — a few large collectives, never one per tensor.
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

from buffer.protocol import decode, encode, require
from buffer.transport import HWM

BUCKET_BYTES = 256 * 2**20


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


def plan_buckets(named: list[tuple[str, torch.Tensor]], bucket_bytes: int = BUCKET_BYTES) -> list[Bucket]:
    """Group tensors by dtype (first-seen order), splitting a dtype's run at `bucket_bytes`."""
    by_dtype: dict[torch.dtype, list[tuple[str, torch.Tensor]]] = {}
    for name, t in named:
        by_dtype.setdefault(t.dtype, []).append((name, t))
    buckets: list[Bucket] = []
    for dtype, items in by_dtype.items():
        current, size = Bucket(dtype, [], []), 0
        for name, t in items:
            nbytes = t.numel() * t.element_size()
            if current.names and size + nbytes > bucket_bytes:
                buckets.append(current)
                current, size = Bucket(dtype, [], []), 0
            current.names.append(name)
            current.shapes.append(list(t.shape))
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
                 backend: str, timeout_s: float, device: torch.device):
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, HWM)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.bind(f"tcp://{host}:{sync_port}")
        self.timeout_s = timeout_s
        self.device = device
        # Every actor says hello before joining the group, so once the group
        # exists every hello is already queued on the socket.
        self.pg, self._store = make_group(host, store_port, 0, num_actors + 1, backend, timeout_s)
        self.actors: dict[int, bytes] = {}
        deadline = time.monotonic() + timeout_s
        while len(self.actors) < num_actors:
            if not self.sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                raise TimeoutError(f"only {len(self.actors)}/{num_actors} actors said hello to the weight sync")
            ident, raw = self.sock.recv_multipart()
            msg = decode(raw, 1 << 20)
            self.actors[require(msg.body, "actor_id", int)] = ident

    def broadcast(self, version: int, named: list[tuple[str, torch.Tensor]]) -> float:
        """Send `named` as policy `version` to every actor; returns seconds spent in the collective."""
        buckets = plan_buckets(named)
        announcement = encode("weights", {"version": version, "buckets": [b.to_wire() for b in buckets]})
        for ident in self.actors.values():
            self.sock.send_multipart([ident, announcement])
        tensors = dict(named)
        start = time.perf_counter()
        for b in buckets:
            flat = torch.cat([tensors[n].detach().reshape(-1) for n in b.names]).to(self.device)
            self.pg.broadcast(flat, 0).wait(timedelta(seconds=self.timeout_s))
        return time.perf_counter() - start

    def close(self) -> None:
        self.sock.close(linger=0)
