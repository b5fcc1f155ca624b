"""Publishing the learner's weights: gather each parameter from its shards, fill buckets, broadcast.

With a sharded learner every learner rank runs `publish`: each parameter is all-gathered from its shards (a
collective of the learner ranks) one at a time and copied into the bucket rank 0 is filling, so no rank ever
holds more than one bucket plus one whole tensor beyond its shards. Rank 0 owns the broadcast
(sync/broadcaster.py: membership, announcements, the collective per bucket); when a sync fails part-way
(an actor died) rank 0 keeps taking part in the gathers, sends nothing more, and the broadcaster makes a new
group and sends the weights again at the next chance (`Learner.next_batch`).

Producer: the learner ranks (each parameter gathered from its shards). Consumer: every actor's weight
receiver thread (sync/receiver.py), through rank 0's broadcaster. Blocking: each gather is a collective of
the learner ranks (bounded by their process group's timeout, learner/parallel.py `init_ranks`); on rank 0,
`begin` may rebuild the group (probes answered within the shorter of `PROBE_S` and `sync.timeout_s`, the
group formed within `sync.timeout_s`) and announces within `sync.timeout_s`, and each bucket's broadcast
waits at most `sync.timeout_s`. Dropped: after a failure the rest of that sync's buckets (the actors get the
current weights whole at the next sync), and actors that do not answer are left out of the new group.
Timeout: a failed sync is counted and logged, never retried in place; `sync.max_failures` failures in a row
raise RuntimeError.
"""

from __future__ import annotations

import time

import torch

from asyncor.sync.broadcaster import WeightBroadcaster
from asyncor.sync.buckets import plan_buckets


def publish(named: list[tuple[str, torch.Tensor]], dtype: torch.dtype, bucket_bytes: int,
            broadcaster: WeightBroadcaster | None, version: int, device: torch.device) -> float:
    """Send the learner's weights (`named`: its state dict, sharded or not) to every actor as `version`.

    Every learner rank calls this with the same `named` (gathering a sharded parameter is a collective); rank 0
    passes its broadcaster, the others None. Floating-point tensors travel in `dtype` (model.dtype). Returns
    the seconds spent gathering and broadcasting."""
    from asyncor.learner.parallel import full_tensor

    specs = [(n, list(t.shape), dtype if t.is_floating_point() else t.dtype) for n, t in named]
    buckets = plan_buckets(specs, bucket_bytes)
    sending = broadcaster is not None and broadcaster.begin(version, buckets)
    tensors = dict(named)
    start = time.perf_counter()
    for b in buckets:
        flat = torch.empty(b.numel, dtype=b.dtype, device=device) if sending else None
        offset = 0
        for name in b.names:
            whole = full_tensor(tensors[name].detach())  # all-gather of one parameter on every rank
            if flat is not None:
                flat[offset:offset + whole.numel()].copy_(whole.reshape(-1))
            offset += whole.numel()
            del whole
        if sending:
            sending = broadcaster.send(flat)
    if sending:
        broadcaster.done()
    return time.perf_counter() - start
