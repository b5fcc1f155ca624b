"""Bucket planning for the broadcast: per dtype, capped, lossless round trip."""

import torch

from asyncor.sync.buckets import Bucket, plan_buckets, unflatten
from asyncor.wire.messages import Announcement, parse
from asyncor.wire.envelope import Message


def test_buckets_group_by_dtype_cap_size_and_round_trip():
    named = [("a", torch.randn(3, 5)), ("b", torch.randn(7).half()), ("c", torch.randn(4, 4)), ("d", torch.randn(2).half())]
    buckets = plan_buckets([(n, t.shape, t.dtype) for n, t in named], bucket_bytes=80)
    assert [b.dtype for b in buckets] == [torch.float32, torch.float32, torch.float16]
    assert [b.names for b in buckets] == [["a"], ["c"], ["b", "d"]]  # a (60 B) + c (64 B) > 80 B
    tensors = dict(named)
    for b in buckets:
        wire = Bucket.from_wire(parse(Message("weights", {"epoch": 0, "version": 0, "buckets": [b.to_wire()]}),
                                      Announcement).buckets[0])
        flat = torch.cat([tensors[n].reshape(-1) for n in wire.names])
        for name, t in unflatten(wire, flat):
            torch.testing.assert_close(t, tensors[name], rtol=0, atol=0)


def test_one_bucket_per_dtype_under_the_cap():
    named = [(f"w{i}", torch.zeros(10)) for i in range(50)]
    assert len(plan_buckets([(n, t.shape, t.dtype) for n, t in named])) == 1
