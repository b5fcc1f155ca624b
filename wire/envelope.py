"""The envelope of every message: one msgpack map `{type, schema, body}`.

`encode` packs a body under its type; `decode` checks the raw bytes (size, msgpack, the envelope's shape and
schema version) and returns a `Message` whose body is still untrusted: the receiver parses it with the typed
definition of its type (wire/messages.py `parse`) or, for a trajectory group, with wire/trajectory.py
`parse_group`. Every check raises `ProtocolError` whose `reason` is one of `REJECT_REASONS`, which the
receiver counts and logs instead of crashing. No pickle, ever.

Total on any input: `decode`, `parse` and `parse_group` raise nothing but `ProtocolError`, whatever msgpack
value sits in whatever field (nil, bool, any int, NaN, str, bin, list, map, ext, timestamp, maps nested a
thousand deep), so every receiver catches that one type (tests/unit/test_wire_fuzz.py; the table of
`benchmarks/wire_fuzz.py`). Untrusted values enter error details only through `preview` (bounded in size
and depth: a deep list's `repr` alone would raise RecursionError), and a detail is cut at `MAX_DETAIL`.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any

import msgpack

SCHEMA_VERSION = 2  # 2: every message type has a tag of its own
MAX_DETAIL = 300  # characters of a refusal's detail (it is logged and sent back)

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

_preview = reprlib.Repr()
_preview.maxlevel, _preview.maxstring, _preview.maxother = 2, 40, 40


def preview(value: Any) -> str:
    """A short, safe rendering of an untrusted value for an error detail: never deeper than 2 levels, never
    long, never raising (a msgpack list nested 1000 deep breaks plain `repr`)."""
    try:
        return _preview.repr(value)
    except Exception:  # noqa: BLE001 - a value's own __repr__ is not ours to trust; its type name is enough
        return f"<{type(value).__name__}>"


class ProtocolError(ValueError):
    def __init__(self, reason: str, detail: str):
        assert reason in REJECT_REASONS, reason
        detail = detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL] + "..."
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
    """The envelope of `raw`, checked; its body is a map still to be parsed. ProtocolError otherwise."""
    if len(raw) > max_bytes:
        raise ProtocolError("oversized", f"{len(raw)} bytes > limit {max_bytes}")
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types (ValueError, TypeError, ExtraData, ...)
        raise ProtocolError("not_msgpack", type(exc).__name__) from None
    if not isinstance(obj, dict) or not {"type", "schema", "body"} <= set(obj) or not isinstance(obj["body"], dict):
        raise ProtocolError("bad_envelope", "expected a map with type, schema and body (a map)")
    schema = obj["schema"]
    if type(schema) is not int or schema != SCHEMA_VERSION:  # exactly an int: True == 1, 2.0 == 2
        raise ProtocolError("schema_mismatch", f"schema {preview(schema)}, this build speaks {SCHEMA_VERSION}")
    if not isinstance(obj["type"], str):
        raise ProtocolError("bad_envelope", f"type {preview(obj['type'])} is not a string")
    return Message(obj["type"], obj["body"])


def request_id(body: dict) -> int | None:
    """A message's request id (`rid`): an int (msgpack's are 64-bit), or None when it has none or anything
    else there (a bool, a list, ...). Replies echo only this, never what a peer put in the field."""
    rid = body.get("rid")
    return rid if type(rid) is int else None


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
