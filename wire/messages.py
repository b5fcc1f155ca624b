"""Every message body, typed: one msgspec Struct per message type, one `parse` for all of them.

The envelope (`{type, schema, body}`, wire/envelope.py) says which message it is: every Struct has its own
`TYPE` tag, unique across the protocol (a unit test checks it). The receiver picks the Struct for that tag
and `parse` validates the body while converting it: field types (a bool is never an int), ranges (`Meta`
bounds), lengths. A body that does not fit raises `ProtocolError` with the reason the receiver counts
(`bad_field`: missing or wrongly typed; `bad_value`: out of range; `unknown_type`: another tag). Unknown
fields are ignored (the request id `rid` rides in every request body). Trajectory groups (tag `group`) carry
packed arrays and per-token checks, so they keep their own parser (wire/trajectory.py `parse_group`).

Senders build the same Structs and send them with `encode_message`, so both sides share one definition.

  actor    -> buffer    ActorHello, GrantRequest, GrantReturn, Bye                 (+ group: parse_group)
  buffer   -> actor     Welcome, GrantReply, WaitReply, Stop, GroupAck, Ack, Refused
  learner  -> buffer    LearnerHello, VersionUpdate, BatchRequest, CheckpointRequest, Done
  buffer   -> learner   BatchReply, WaitReply, BufferState, Ack, Refused
  actor    -> learner   ReceiverHello, Here                                         (weight sync, sync/)
  learner  -> actor     Probe, Join, Announcement
  learner rank 0 -> the other ranks   BatchReply or Resync
  any role -> launcher  MetricsRecord, Flush, RoleSummary; the launcher acknowledges with Ack
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec

from asyncor.wire.envelope import Message, ProtocolError, encode, preview  # noqa: F401  (ProtocolError: parse's)

TRAJECTORY_GROUP = "group"  # the tag of a trajectory group (wire/trajectory.py), the one body that is not a Struct

NonNeg = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
MAX_GRANT_HOLD_S = 2.0
HoldS = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_GRANT_HOLD_S)]
RetryS = Annotated[float, msgspec.Meta(ge=0.0, le=60.0)]
DTYPES = Literal["float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"]
KINDS = Literal["arithmetic", "math", "code", "custom"]  # how a prompt's answers are scored (tasks/scoring.py)
PLAIN_DEPTH = 6  # maps and lists of plain values nest at most this deep (`plain`)
PLAIN_STR = 4096  # the longest string of a plain value

T = TypeVar("T", bound="Body")


class Body(msgspec.Struct, kw_only=True):
    TYPE: ClassVar[str]


def plain(obj: Any, depth: int = 0) -> Any:
    """A JSON-able copy of a decoded msgpack value (what a free-form field such as a metrics record or an
    actor's goodbye figures may hold): null, bools, ints in int64, floats (non-finite ones become null: JSON
    has none), strings of at most PLAIN_STR characters, lists, and maps with string keys, at most PLAIN_DEPTH
    deep. ProtocolError otherwise (bytes, ext and timestamp values, other keys, deeper nesting)."""
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        if not -(1 << 63) <= obj < 1 << 63:
            raise ProtocolError("bad_value", "integer out of range")
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        if len(obj) > PLAIN_STR:
            raise ProtocolError("bad_value", f"string longer than {PLAIN_STR}")
        return obj
    if depth >= PLAIN_DEPTH:
        raise ProtocolError("bad_field", f"nested deeper than {PLAIN_DEPTH}")
    if isinstance(obj, list):
        return [plain(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) and len(k) <= 256 for k in obj):
            raise ProtocolError("bad_field", "map keys must be strings of at most 256 characters")
        return {k: plain(v, depth + 1) for k, v in obj.items()}
    raise ProtocolError("bad_field", f"value of type {type(obj).__name__}")


# ----------------------------------------------------------------------------- actor <-> buffer


class ActorHello(Body):
    TYPE = "actor_hello"
    actor_id: NonNeg


class GrantRequest(Body):
    TYPE = "grant_request"
    actor_id: NonNeg
    max_prompts: NonNeg
    version: NonNeg = 0
    hold_s: HoldS = 0.0  # how long the buffer may hold the request when it has nothing to grant


class GrantReturn(Body):
    TYPE = "grant_return"
    actor_id: NonNeg
    prompt_ids: list[NonNeg]


class Bye(Body):
    TYPE = "bye"
    actor_id: NonNeg
    stats: dict[str, Any] = {}  # the actor's final figures; the buffer keeps them only if `plain`


class Welcome(Body):
    """The buffer's answer to an actor's hello."""
    TYPE = "welcome"
    version: NonNeg  # the learner's version now
    restarted: bool  # this actor id said hello before: an earlier incarnation died; its grants were given back
    seq_start: NonNeg  # number this incarnation's groups from here
    status: Literal["ok"] = "ok"


PackedArray = dict[str, Any]  # {dtype, shape, data}: raw little-endian bytes, checked by wire/arrays.py unpack_array


class GrantedPrompt(msgspec.Struct, kw_only=True):
    prompt_id: NonNeg
    token_ids: PackedArray
    kind: KINDS  # how the answers are scored (tasks/scoring.py)
    reference: Any  # what the verifier compares with: the answer, or a code problem's tests (the buffer's own)


class Sampling(msgspec.Struct, kw_only=True):
    n: Positive  # the stage's group size
    max_tokens: Positive  # the stage's response length limit
    stage: NonNeg = 0  # the context-length stage (configs/stages.py), for logs


class GrantReply(Body):
    TYPE = "grant"
    min_version: NonNeg  # generate with this version or newer
    prompts: list[GrantedPrompt]
    sampling: Sampling


class WaitReply(Body):
    TYPE = "wait"
    retry_s: RetryS = 0.05
    size: NonNeg = 0  # (to the learner) groups the buffer holds


class Stop(Body):
    TYPE = "stop"


class GroupAck(Body):
    """The buffer's answer to a group it took: stored (accepted), already had (duplicate: at-least-once
    delivery), or has no room for yet (full: send it again later)."""
    TYPE = "group_ack"
    status: Literal["accepted", "duplicate", "full"]
    seq: NonNeg


class Refused(Body):
    """The answer to any request the receiver refused: the reason it counted (wire/envelope.py
    REJECT_REASONS) and a readable detail."""
    TYPE = "refused"
    reason: str
    detail: str


# ----------------------------------------------------------------------------- learner <-> buffer


class LearnerHello(Body):
    TYPE = "learner_hello"


class VersionUpdate(Body):
    TYPE = "version"
    version: NonNeg


class BatchRequest(Body):
    TYPE = "batch_request"
    version: NonNeg
    n_groups: Positive


class CheckpointRequest(Body):
    TYPE = "checkpoint"


class Done(Body):
    TYPE = "done"


class GroupsReport(msgspec.Struct, kw_only=True):
    """What arrived at the buffer since the last batch (buffer/rejection.py GroupTally.report), for the
    learner's rejection-sampling metrics."""
    arrived: NonNeg = 0
    solve_all: NonNeg = 0
    solve_none: NonNeg = 0
    accuracy_hist: Annotated[list[NonNeg], msgspec.Meta(max_length=64)] = []


class BatchReply(Body):
    """A batch: its groups (each checked by wire/trajectory.py parse_group; `parse_batch` checks the whole)
    and the staleness of each."""
    TYPE = "batch"
    version: NonNeg
    staleness: list[NonNeg]
    groups: list[dict[str, Any]]  # each a trajectory group: wire/trajectory.py parse_group
    groups_report: GroupsReport | None = None


class BufferState(Body):
    """The buffer's answer to a checkpoint request: its state, saved in the learner's checkpoint."""
    TYPE = "buffer_state"
    state: dict[str, Any]


class Ack(Body):
    """A request was done (a version noted, grants taken back, a goodbye, telemetry written)."""
    TYPE = "ack"
    status: Literal["ok"] = "ok"


class Resync(Body):
    """Rank 0 to the other learner ranks: publish the current weights again (in place of a batch)."""
    TYPE = "resync"


# ----------------------------------------------------------------------------- weight sync (sync/)


class ReceiverHello(Body):
    """An actor's weight receiver joining (or rejoining) the broadcast."""
    TYPE = "receiver_hello"
    actor_id: NonNeg


class Here(Body):
    TYPE = "here"
    actor_id: NonNeg
    epoch: NonNeg


class Probe(Body):
    TYPE = "probe"
    epoch: NonNeg


class Join(Body):
    TYPE = "join"
    epoch: NonNeg
    rank: Positive
    world_size: Annotated[int, msgspec.Meta(ge=2)]


class BucketWire(msgspec.Struct):
    dtype: DTYPES
    names: list[str]
    shapes: list[list[NonNeg]]


class Announcement(Body):
    TYPE = "weights"
    epoch: NonNeg
    version: NonNeg
    buckets: list[BucketWire]


# ----------------------------------------------------------------------------- telemetry (telemetry/link.py)


class MetricsRecord(Body):
    """One metrics record (`{ts, role, step, role/metric: value, ...}`), fire-and-forget; the launcher's
    collector checks its contents (launcher/collector.py)."""
    TYPE = "metrics"
    record: dict[str, Any]


class Flush(Body):
    """Acknowledged once every record sent before it is written."""
    TYPE = "flush"


class RoleSummary(Body):
    """A role's final figures (roles/<role>.json), acknowledged once written."""
    TYPE = "summary"
    role: str
    summary: dict[str, Any]


# ----------------------------------------------------------------------------- both ways


def parse(msg: Message, kind: type[T]) -> T:
    """`msg`'s body as a `kind`, checked; ProtocolError (bad_field / bad_value / unknown_type) otherwise, and
    nothing else whatever the body holds (msgspec reports every mismatch as a ValidationError)."""
    if msg.type != kind.TYPE:
        raise ProtocolError("unknown_type", f"{preview(msg.type)} where {kind.TYPE!r} was expected")
    try:
        return msgspec.convert(msg.body, kind, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        # Type errors and missing fields: "Expected `int`, got `str`", "Object missing required field `x`";
        # everything else is a bound or a length ("Expected `int` >= 0", "Expected `str` matching ...").
        reason = "bad_field" if (", got `" in text or "missing required field" in text) else "bad_value"
        raise ProtocolError(reason, f"{kind.__name__}: {text}") from None


def body(message: Body) -> dict:
    """The wire form of a message body (plain msgpack-able builtins)."""
    return msgspec.to_builtins(message, builtin_types=(bytes,))  # bytes stay bytes (msgpack bin), not base64


def encode_message(message: Body) -> bytes:
    """A typed message in its envelope."""
    return encode(message.TYPE, body(message))
