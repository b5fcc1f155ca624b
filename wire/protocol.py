"""Wire protocol: every message is one msgpack map `{type, schema, body}`.

Arrays travel as `{dtype, shape, data: bytes}` (raw little-endian bytes, never
pickle, never `tolist()`). `decode` checks the envelope; `parse_group` checks
a TrajectoryGroup field by field (per-token arrays, lengths, finiteness), and
every other message body is a typed Struct checked by `wire.messages.parse`.
Both raise `ProtocolError` whose `reason` is one of `REJECT_REASONS`, which the
receiver counts and logs instead of crashing.

Message types (producer -> consumer; the typed bodies: wire/messages.py):

  actor   -> buffer   hello, grant_request, group, grant_return, bye
  buffer  -> actor    grant, wait, ack, stop
  learner -> buffer   hello, batch_request, version, checkpoint, done
  buffer  -> learner  batch, wait, stop, ack (to checkpoint: the buffer's
                      state, saved in the learner's checkpoint)
  learner -> actor    weights (announcement of one broadcast; the tensors
                      themselves travel through the collective), probe, join
  actor   -> learner  hello, here (the weight sync's membership, see
                      sync/broadcaster.py)
  learner -> learner ranks  batch, or resync (rank 0 tells the others to
                      publish the current weights again)
  any role -> launcher  metrics (one metrics record), summary (a role's final
                      figures; acknowledged with ack), see telemetry/collector.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

SCHEMA_VERSION = 1

MESSAGE_TYPES = frozenset(
    {
        "hello", "grant_request", "group", "grant_return", "bye",
        "grant", "wait", "ack", "stop",
        "batch_request", "version", "checkpoint", "done", "batch",
        "weights", "probe", "here", "join", "resync",
        "metrics", "summary",
    }
)

FINISH_REASONS = frozenset({"stop", "length", "abort"})

REJECT_REASONS = (
    "oversized",        # raw message larger than the configured limit
    "not_msgpack",      # bytes that do not unpack
    "bad_envelope",     # not a map with type / schema / body
    "unknown_type",     # type not in MESSAGE_TYPES
    "schema_mismatch",  # schema version differs from SCHEMA_VERSION
    "bad_field",        # missing field or wrong type
    "bad_array",        # array with wrong dtype, shape or byte count
    "length_mismatch",  # per-token arrays of different lengths
    "non_finite",       # NaN / inf where a finite number is required
    "bad_value",        # out-of-range value (negative version, bad finish reason, ...)
)


class ProtocolError(ValueError):
    def __init__(self, reason: str, detail: str):
        assert reason in REJECT_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------- arrays


def pack_array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def unpack_array(obj: Any, name: str, dtype: str, ndim: int = 1) -> np.ndarray:
    """Decode `{dtype, shape, data}`; `dtype` is the one numpy dtype accepted for this field."""
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise ProtocolError("bad_array", f"{name}: expected {{dtype, shape, data}}")
    want = np.dtype(dtype)
    if obj["dtype"] != want.str:
        raise ProtocolError("bad_array", f"{name}: dtype {obj['dtype']!r}, expected {want.str!r}")
    shape = obj["shape"]
    if not isinstance(shape, list) or len(shape) != ndim or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ProtocolError("bad_array", f"{name}: shape {shape!r}, expected {ndim} non-negative ints")
    data = obj["data"]
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * want.itemsize:
        raise ProtocolError("bad_array", f"{name}: byte count does not match shape {shape} of {want}")
    return np.frombuffer(data, dtype=want).reshape(shape)


# ----------------------------------------------------------------------------- envelope


@dataclass
class Message:
    type: str
    body: dict


def encode(type_: str, body: dict) -> bytes:
    assert type_ in MESSAGE_TYPES, type_
    return msgpack.packb({"type": type_, "schema": SCHEMA_VERSION, "body": body}, use_bin_type=True)


def encode_message(message) -> bytes:
    """A typed message (wire/messages.py) in its envelope."""
    from wire.messages import body

    return encode(message.TYPE, body(message))


def decode(raw: bytes, max_bytes: int) -> Message:
    if len(raw) > max_bytes:
        raise ProtocolError("oversized", f"{len(raw)} bytes > limit {max_bytes}")
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError("not_msgpack", type(exc).__name__) from None
    if not isinstance(obj, dict) or not {"type", "schema", "body"} <= set(obj) or not isinstance(obj["body"], dict):
        raise ProtocolError("bad_envelope", "expected a map with type, schema and body (a map)")
    if obj["schema"] != SCHEMA_VERSION:
        raise ProtocolError("schema_mismatch", f"schema {obj['schema']!r}, this build speaks {SCHEMA_VERSION}")
    if obj["type"] not in MESSAGE_TYPES:
        raise ProtocolError("unknown_type", f"type {obj['type']!r}")
    return Message(obj["type"], obj["body"])


def require(body: dict, name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in body:
        raise ProtocolError("bad_field", f"missing {name!r}")
    value = body[name]
    # bool is an int in python; never accept it where a number is meant.
    if isinstance(value, bool) and kind is not bool:
        raise ProtocolError("bad_field", f"{name!r} is a bool")
    if not isinstance(value, kind):
        raise ProtocolError("bad_field", f"{name!r} has type {type(value).__name__}")
    return value


# ----------------------------------------------------------------------------- trajectory groups


@dataclass
class Response:
    token_ids: np.ndarray  # (T,) int32
    logprobs: np.ndarray  # (T,) float32 behaviour log-prob of each sampled token
    min_version: int  # oldest policy version that produced any of its tokens
    finish_reason: str  # stop | length | abort
    reward: float
    versions: np.ndarray | None = None  # (T,) int32 per-token versions (in-flight updates only)

    def to_wire(self) -> dict:
        out = {
            "token_ids": pack_array(self.token_ids.astype(np.int32, copy=False)),
            "logprobs": pack_array(self.logprobs.astype(np.float32, copy=False)),
            "min_version": int(self.min_version),
            "finish_reason": self.finish_reason,
            "reward": float(self.reward),
        }
        if self.versions is not None:
            out["versions"] = pack_array(self.versions.astype(np.int32, copy=False))
        return out


@dataclass
class TrajectoryGroup:
    prompt_id: int
    prompt_ids: np.ndarray  # (P,) int32
    responses: list[Response]
    actor_id: int
    seq: int  # per-actor sequence number; (actor_id, seq) dedupes redelivery
    gen_time_s: float
    details: dict = field(default_factory=dict)  # verifier details, free-form scalars

    @property
    def min_version(self) -> int:
        return min(r.min_version for r in self.responses)

    @property
    def rewards(self) -> np.ndarray:
        return np.array([r.reward for r in self.responses], dtype=np.float32)

    @property
    def num_tokens(self) -> int:
        return sum(len(r.token_ids) for r in self.responses)

    def to_wire(self) -> dict:
        return {
            "prompt_id": int(self.prompt_id),
            "prompt_ids": pack_array(self.prompt_ids.astype(np.int32, copy=False)),
            "responses": [r.to_wire() for r in self.responses],
            "actor_id": int(self.actor_id),
            "seq": int(self.seq),
            "gen_time_s": float(self.gen_time_s),
            "details": self.details,
        }


def _parse_response(obj: Any, i: int) -> Response:
    if not isinstance(obj, dict):
        raise ProtocolError("bad_field", f"responses[{i}] is not a map")
    token_ids = unpack_array(require(obj, "token_ids", dict), f"responses[{i}].token_ids", "<i4")
    logprobs = unpack_array(require(obj, "logprobs", dict), f"responses[{i}].logprobs", "<f4")
    if len(token_ids) != len(logprobs):
        raise ProtocolError("length_mismatch", f"responses[{i}]: {len(token_ids)} tokens, {len(logprobs)} log-probs")
    versions = None
    if "versions" in obj:
        versions = unpack_array(obj["versions"], f"responses[{i}].versions", "<i4")
        if len(versions) != len(token_ids):
            raise ProtocolError("length_mismatch", f"responses[{i}]: {len(token_ids)} tokens, {len(versions)} versions")
    if not np.isfinite(logprobs).all():
        raise ProtocolError("non_finite", f"responses[{i}].logprobs")
    if (logprobs > 1e-3).any():
        raise ProtocolError("bad_value", f"responses[{i}].logprobs has positive log-probabilities")
    if (token_ids < 0).any():
        raise ProtocolError("bad_value", f"responses[{i}].token_ids has negative ids")
    min_version = require(obj, "min_version", int)
    if min_version < 0 or (versions is not None and len(versions) and int(versions.min()) != min_version):
        raise ProtocolError("bad_value", f"responses[{i}].min_version {min_version} is negative or disagrees with versions")
    finish = require(obj, "finish_reason", str)
    if finish not in FINISH_REASONS:
        raise ProtocolError("bad_value", f"responses[{i}].finish_reason {finish!r} not in {sorted(FINISH_REASONS)}")
    reward = float(require(obj, "reward", (int, float)))
    if not math.isfinite(reward):
        raise ProtocolError("non_finite", f"responses[{i}].reward")
    return Response(token_ids, logprobs, min_version, finish, reward, versions)


def parse_group(body: dict, max_group_size: int = 1 << 16) -> TrajectoryGroup:
    responses = require(body, "responses", list)
    if not 1 <= len(responses) <= max_group_size:
        raise ProtocolError("bad_value", f"group has {len(responses)} responses (1..{max_group_size} accepted)")
    gen_time = float(require(body, "gen_time_s", (int, float)))
    if not math.isfinite(gen_time) or gen_time < 0:
        raise ProtocolError("non_finite", "gen_time_s")
    details = body.get("details", {})
    if not isinstance(details, dict) or len(details) > 64 or not all(
            isinstance(k, str) and len(k) <= 64 and (v is None or isinstance(v, (bool, int, float, str)))
            and not (isinstance(v, str) and len(v) > 1024) for k, v in details.items()):
        raise ProtocolError("bad_field", "'details' must be a map of at most 64 names to scalars")
    prompt_ids = unpack_array(require(body, "prompt_ids", dict), "prompt_ids", "<i4")
    group = TrajectoryGroup(
        prompt_id=require(body, "prompt_id", int),
        prompt_ids=prompt_ids,
        responses=[_parse_response(r, i) for i, r in enumerate(responses)],
        actor_id=require(body, "actor_id", int),
        seq=require(body, "seq", int),
        gen_time_s=gen_time,
        details=details,
    )
    if group.prompt_id < 0 or group.actor_id < 0 or group.seq < 0:
        raise ProtocolError("bad_value", "prompt_id, actor_id and seq must be non-negative")
    return group
