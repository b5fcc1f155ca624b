"""Weights in transit: (name, shape, dtype) lists cut into per-dtype buckets, flattened for one collective each.

The learner announces the buckets (`Bucket.to_wire`: dtype, names, shapes) before broadcasting them, so a
receiver allocates each flat tensor and cuts it back into named tensors (`unflatten`) without any other
metadata. A few large collectives, never one per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asyncor.wire.messages import BucketWire
from asyncor.wire.envelope import ProtocolError

BUCKET_BYTES = 256 * 2**20


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
    def from_wire(obj: BucketWire) -> "Bucket":
        """A bucket from an announcement (already checked by wire.messages.parse), one shape per name."""
        if len(obj.names) != len(obj.shapes):
            raise ProtocolError("length_mismatch", f"a bucket with {len(obj.names)} names, {len(obj.shapes)} shapes")
        return Bucket(getattr(torch, obj.dtype), list(obj.names), [list(s) for s in obj.shapes])


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
