"""The wire fuzz table: every msgpack type in every field of every message, through what its receiver runs.

    python benchmarks/wire_fuzz.py              # per message: sent / refused / accepted / crashed, then the grid
    python benchmarks/wire_fuzz.py --rows       # one line per message x field x msgpack type instead of the grid

Each message type starts from an honest example (`EXAMPLES`: every Body of wire/messages.py and the
trajectory group). One field at a time, at every path of the example's body (`responses.0.logprobs.dtype`:
maps and the first item of lists, down to the leaves), is replaced by each sample of each msgpack type
(`SAMPLES`: nil, bool, ints from -2**63 to 2**64 - 1, floats with NaN and inf, str, bin, list, map, maps
with bytes or int keys, ext, timestamp, lists and maps nested 1000 deep); so are the envelope's own
`type`, `schema` and `body`. The bytes go to what the receiver runs (`RECEIVERS`): decode, then parse
(wire/messages.py) or parse_group / parse_batch (wire/trajectory.py), and the checks that follow them
(the collector's record and summary checks, the buffer's check of an actor's goodbye figures, the actor's
unpacking of granted token ids, the weight receiver's buckets). Outcome: `refused` (ProtocolError, the
one exception a receiver catches), `accepted` (parsed), `crashed` (any other exception: the bug this
looks for). tests/unit/test_wire_fuzz.py asserts 0 crashes over the same grid and adds random bodies.
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgpack  # noqa: E402
import numpy as np  # noqa: E402

from asyncor.wire import messages as wire  # noqa: E402
from asyncor.wire.arrays import pack_array, unpack_array  # noqa: E402
from asyncor.wire.envelope import SCHEMA_VERSION, ProtocolError, decode  # noqa: E402
from asyncor.wire.trajectory import Response, TrajectoryGroup, parse_batch, parse_group  # noqa: E402

MAX_BYTES = 1 << 24
MAX_STALENESS = 4  # the batch receiver's buffer.max_staleness


def nested(depth: int, as_map: bool) -> Any:
    """A list (or a map {"k": ...}) nested `depth` deep: msgpack's own limit is about 1024."""
    value: Any = 1
    for _ in range(depth):
        value = {"k": value} if as_map else [value]
    return value


SAMPLES: dict[str, list] = {
    "nil": [None],
    "bool": [True, False],
    "int": [0, 1, 7, 2**31],
    "negative int": [-1, -(2**63)],
    "huge int": [2**62, 2**63, 2**64 - 1],
    "float": [0.0, -1.5, 2.0, 1e308],
    "nan/inf": [math.nan, math.inf, -math.inf],
    "str": ["", "x", "stop", "float32", "é" * 5000],
    "bin": [b"", b"\x00" * 8],
    "list": [[], [0, 1], [None, "x", -1], [[1]]],
    "map": [{}, {"a": 1}, {"dtype": "<i4", "shape": [1], "data": b"\x00" * 4}],
    "map bin keys": [{b"k": 1}],
    "map int keys": [{1: 2}],
    "ext": [msgpack.ExtType(5, b"ab")],
    "timestamp": [msgpack.Timestamp(1, 2)],
    "deep": [nested(1000, False), nested(1000, True)],
}


def honest_group() -> TrajectoryGroup:
    responses = [Response(np.array([5, 2], np.int32), np.array([-0.5, -0.1], np.float32), 1, "stop", 1.0,
                          versions=np.array([1, 2], np.int32)),
                 Response(np.array([7], np.int32), np.array([-0.2], np.float32), 2, "length", 0.0)]
    return TrajectoryGroup(prompt_id=3, prompt_ids=np.arange(4, dtype=np.int32), responses=responses, actor_id=0,
                           seq=5, gen_time_s=0.5, details={"verifier": "exact", "ms": 1.5})


GROUP = wire.TRAJECTORY_GROUP
MESSAGES: dict[type, wire.Body] = {  # one valid example of every message type (tests/unit/test_messages.py too)
    wire.ActorHello: wire.ActorHello(actor_id=3),
    wire.GrantRequest: wire.GrantRequest(actor_id=1, max_prompts=4, version=2, hold_s=0.5),
    wire.GrantReturn: wire.GrantReturn(actor_id=1, prompt_ids=[4, 9]),
    wire.Bye: wire.Bye(actor_id=1, stats={"tokens": 12, "time": {"generating": 1.5}, "versions": [1, 2]}),
    wire.Welcome: wire.Welcome(version=5, restarted=True, seq_start=65540),
    wire.GrantReply: wire.GrantReply(min_version=2, sampling=wire.Sampling(n=4, max_tokens=64), prompts=[
        wire.GrantedPrompt(prompt_id=7, token_ids=pack_array(np.arange(5, dtype=np.int32)), kind="arithmetic",
                           reference="12")]),
    wire.WaitReply: wire.WaitReply(retry_s=0.05, size=3),
    wire.Stop: wire.Stop(),
    wire.GroupAck: wire.GroupAck(status="duplicate", seq=4),
    wire.Refused: wire.Refused(reason="bad_value", detail="why"),
    wire.LearnerHello: wire.LearnerHello(),
    wire.VersionUpdate: wire.VersionUpdate(version=9),
    wire.BatchRequest: wire.BatchRequest(version=9, n_groups=16),
    wire.CheckpointRequest: wire.CheckpointRequest(),
    wire.Done: wire.Done(),
    wire.BatchReply: wire.BatchReply(version=9, staleness=[1], groups=[honest_group().to_wire()],
                                     groups_report=wire.GroupsReport(arrived=3, solve_all=1, accuracy_hist=[0, 2])),
    wire.BufferState: wire.BufferState(state={"cursor": 4}),
    wire.Ack: wire.Ack(),
    wire.Resync: wire.Resync(),
    wire.ReceiverHello: wire.ReceiverHello(actor_id=2),
    wire.Here: wire.Here(actor_id=2, epoch=3),
    wire.Probe: wire.Probe(epoch=3),
    wire.Join: wire.Join(epoch=3, rank=1, world_size=2),
    wire.Announcement: wire.Announcement(epoch=3, version=7, buckets=[
        wire.BucketWire(dtype="bfloat16", names=["w", "b"], shapes=[[3, 5], [5]])]),
    wire.MetricsRecord: wire.MetricsRecord(record={"ts": 1.0, "role": "learner", "step": 3, "learner/loss": 0.5}),
    wire.Flush: wire.Flush(),
    wire.RoleSummary: wire.RoleSummary(role="buffer", summary={"staleness": {"max": 2}}),
}
EXAMPLES: dict[str, dict] = {kind.TYPE: wire.body(example) for kind, example in MESSAGES.items()}
EXAMPLES[GROUP] = honest_group().to_wire()


# ----------------------------------------------------------------------------- what each receiver runs


def _grant(msg: wire.Message) -> Any:
    """The actor's side (actors/buffer_link.py): the reply parsed, each prompt's token ids unpacked."""
    grant = wire.parse(msg, wire.GrantReply)
    return [unpack_array(p.token_ids, "token_ids", "<i4") for p in grant.prompts]


def _announcement(msg: wire.Message) -> Any:
    """The weight receiver's side (sync/receiver.py): the announcement parsed, its buckets checked."""
    from asyncor.sync.buckets import Bucket

    return [Bucket.from_wire(b) for b in wire.parse(msg, wire.Announcement).buckets]


def _record(msg: wire.Message) -> Any:
    from asyncor.launcher.collector import check_record, run_roles

    return check_record(wire.parse(msg, wire.MetricsRecord).record, run_roles(4)[0])


def _summary(msg: wire.Message) -> Any:
    from asyncor.launcher.collector import check_summary, run_roles

    m = wire.parse(msg, wire.RoleSummary)
    return check_summary(m.role, m.summary, run_roles(4)[1])


RECEIVERS: dict[str, Callable[[wire.Message], Any]] = {
    GROUP: lambda msg: parse_group(msg.body, max_group_size=8),  # (the buffer checks the envelope's type first)
    wire.BatchReply.TYPE: lambda msg: parse_batch(msg, MAX_STALENESS),
    wire.Bye.TYPE: lambda msg: wire.plain(wire.parse(msg, wire.Bye).stats),  # buffer/service.py keeps them
    wire.GrantReply.TYPE: _grant,
    wire.Announcement.TYPE: _announcement,
    wire.MetricsRecord.TYPE: _record,
    wire.RoleSummary.TYPE: _summary,
}
KINDS = {kind.TYPE: kind for kind in wire.Body.__subclasses__()}


def receive(type_: str, raw: bytes) -> Any:
    """What the receiver of a `type_` message does with `raw`: ProtocolError when it refuses it."""
    msg = decode(raw, MAX_BYTES)
    if type_ in RECEIVERS:
        if msg.type != type_:
            raise ProtocolError("unknown_type", "another type")
        return RECEIVERS[type_](msg)
    return wire.parse(msg, KINDS[type_])


def outcome(type_: str, raw: bytes) -> tuple[str, str]:
    """("refused" | "accepted" | "crashed", the exception's type and message for a crash)."""
    try:
        receive(type_, raw)
    except ProtocolError:
        return "refused", ""
    except BaseException as exc:  # noqa: BLE001 - a crash is exactly what is counted here
        return "crashed", f"{type(exc).__name__}: {str(exc)[:120]}"
    return "accepted", ""


# ----------------------------------------------------------------------------- the grid


def paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into an honest body: map keys, and the first item of each list, down to the leaves."""
    out = []
    items = obj.items() if isinstance(obj, dict) else ([(0, obj[0])] if isinstance(obj, list) and obj else [])
    for key, value in items:
        out.append(prefix + (key,))
        out.extend(paths(value, prefix + (key,)))
    return out


def replaced(obj: Any, path: tuple, value: Any) -> Any:
    """A copy of `obj` with the item at `path` replaced by (or, in a map, set to) `value`."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: replaced(obj[head], rest, value) if rest else value}
    return [replaced(obj[0], rest, value)] + obj[1:]


def envelope(type_: Any, body: Any, schema: Any = SCHEMA_VERSION) -> bytes:
    return msgpack.packb({"type": type_, "schema": schema, "body": body}, use_bin_type=True)


def cases():
    """(message type, field, msgpack type, raw bytes) over the whole grid."""
    for type_, body in EXAMPLES.items():
        for where in ("type", "schema", "body"):
            for sample_kind, samples in SAMPLES.items():
                for value in samples:
                    parts = {"type": type_, "schema": SCHEMA_VERSION, "body": body, where: value}
                    yield type_, f"<envelope {where}>", sample_kind, envelope(parts["type"], parts["body"],
                                                                                parts["schema"])
        for path in paths(body):
            for sample_kind, samples in SAMPLES.items():
                for value in samples:
                    yield type_, ".".join(map(str, path)), sample_kind, envelope(type_, replaced(body, path, value))


def run() -> tuple[dict, list]:
    """{(message type, field, msgpack type): Counter of outcomes}, and the crashes (case and error)."""
    table: dict = collections.defaultdict(collections.Counter)
    crashes = []
    for type_, field, sample_kind, raw in cases():
        result, error = outcome(type_, raw)
        table[type_, field, sample_kind][result] += 1
        if result == "crashed":
            crashes.append((type_, field, sample_kind, error))
    return table, crashes


def honest_examples_accepted() -> list[str]:
    """The message types whose honest example the receiver does not accept (should be none)."""
    return [t for t, body in EXAMPLES.items() if outcome(t, envelope(t, body))[0] != "accepted"]


# ----------------------------------------------------------------------------- printing


def cell(counts: collections.Counter) -> str:
    if counts["crashed"]:
        return "X"
    if counts["accepted"] and counts["refused"]:
        return "r/a"
    return "a" if counts["accepted"] else "r"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", action="store_true", help="one line per message x field x msgpack type")
    args = parser.parse_args()
    table, crashes = run()
    kinds = list(SAMPLES)
    if args.rows:
        print("| message | field | msgpack type | sent | refused | accepted | crashed |")
        print("|---|---|---|---|---|---|---|")
        for (type_, field, kind), c in table.items():
            print(f"| {type_} | {field} | {kind} | {sum(c.values())} | {c['refused']} | {c['accepted']} | "
                  f"{c['crashed']} |")
    else:
        per_type: dict = collections.defaultdict(collections.Counter)
        for (type_, _, _), c in table.items():
            per_type[type_].update(c)
        print("| message | fields (type, schema, body among them) | sent | refused | accepted | crashed |")
        print("|---|---|---|---|---|---|")
        for type_, c in per_type.items():
            fields = len({f for (t, f, _) in table if t == type_})
            print(f"| {type_} | {fields} | {sum(c.values())} | {c['refused']} | {c['accepted']} | {c['crashed']} |")
        print()
        print("Grid (r: every sample refused, a: every sample accepted, r/a: some of each, X: a crash):")
        print()
        print("| message.field | " + " | ".join(kinds) + " |")
        print("|---|" + "---|" * len(kinds))
        for type_, field in dict.fromkeys((t, f) for (t, f, _) in table):
            print(f"| {type_}.{field} | " + " | ".join(cell(table[type_, field, k]) for k in kinds) + " |")
    total = collections.Counter()
    for c in table.values():
        total.update(c)
    print()
    print(f"total: {sum(total.values())} sent, {total['refused']} refused, {total['accepted']} accepted, "
          f"{total['crashed']} crashed; honest examples not accepted: {honest_examples_accepted() or 'none'}")
    for crash in crashes[:20]:
        print("crash:", *crash)
    sys.exit(1 if crashes else 0)


if __name__ == "__main__":
    main()
