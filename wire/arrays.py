"""Arrays on the wire: `{dtype, shape, data}` with the raw little-endian bytes (never pickle, never `tolist()`).

`unpack_array` accepts exactly one dtype per field and checks the shape and the byte count before it builds
the (read-only, zero-copy) numpy view; anything else is a `ProtocolError("bad_array")`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from asyncor.wire.envelope import ProtocolError, preview


def pack_array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def unpack_array(obj: Any, name: str, dtype: str, ndim: int = 1) -> np.ndarray:
    """Decode `{dtype, shape, data}`; `dtype` is the one numpy dtype accepted for this field."""
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise ProtocolError("bad_array", f"{name}: expected {{dtype, shape, data}}")
    want = np.dtype(dtype)
    if obj["dtype"] != want.str:
        raise ProtocolError("bad_array", f"{name}: dtype {preview(obj['dtype'])}, expected {want.str!r}")
    shape = obj["shape"]
    if not isinstance(shape, list) or len(shape) != ndim or not all(type(s) is int and s >= 0 for s in shape):
        raise ProtocolError("bad_array", f"{name}: shape {preview(shape)}, expected {ndim} non-negative ints")
    data = obj["data"]
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * want.itemsize:
        raise ProtocolError("bad_array", f"{name}: byte count does not match shape {preview(shape)} of {want}")
    return np.frombuffer(data, dtype=want).reshape(shape)
