"""The envelope of every message: one msgpack map `{type, schema, body}`.

`encode` packs a body under its type; `decode` checks the raw bytes (size, msgpack, the envelope's shape and
schema version) and returns a `Message` whose body is still untrusted: the receiver parses it with the typed
definition of its type (wire/messages.py `parse`) or, for a trajectory group, with wire/trajectory.py
`parse_group`. Every check raises `ProtocolError` whose `reason` is one of `REJECT_REASONS`, which the
receiver counts and logs instead of crashing. No pickle, ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

SCHEMA_VERSION = 2  # 2: every message type has a tag of its own

REJECT_REASONS = (
    "oversized",        # raw message larger than the configured limit
    "not_msgpack",      # bytes that do not unpack
    "bad_envelope",     # not a map with type / schema / body
    "unknown_type",     # a type the receiver does not take
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


@dataclass
class Message:
    type: str
    body: dict


def encode(type_: str, body: dict) -> bytes:
    return msgpack.packb({"type": type_, "schema": SCHEMA_VERSION, "body": body}, use_bin_type=True)


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
    if not isinstance(obj["type"], str):
        raise ProtocolError("bad_envelope", f"type {obj['type']!r} is not a string")
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
