"""Wire protocol: round trip, and every rejection reason."""

import msgpack
import numpy as np
import pytest

from asyncor.wire.arrays import pack_array

from asyncor.wire.envelope import REJECT_REASONS, SCHEMA_VERSION, ProtocolError, decode, encode

from asyncor.wire.trajectory import Response, TrajectoryGroup, parse_group

MAX = 1 << 20


def make_group(group_size=3, seed=0) -> TrajectoryGroup:
    rng = np.random.default_rng(seed)
    responses = []
    for i in range(group_size):
        n = int(rng.integers(1, 9))
        responses.append(Response(rng.integers(0, 50, n).astype(np.int32), -rng.random(n).astype(np.float32),
                                  min_version=3 + i, finish_reason="stop" if i else "length", reward=float(i % 2)))
    return TrajectoryGroup(prompt_id=7, prompt_ids=np.arange(5, dtype=np.int32), responses=responses, actor_id=2,
                           seq=11, gen_time_s=0.25, details={"verifier": "exact"})


def roundtrip(body: dict) -> TrajectoryGroup:
    return parse_group(decode(encode("group", body), MAX).body)


def test_group_round_trip_preserves_every_field():
    g = make_group()
    back = roundtrip(g.to_wire())
    assert (back.prompt_id, back.actor_id, back.seq, back.gen_time_s, back.details) == (7, 2, 11, 0.25, {"verifier": "exact"})
    np.testing.assert_array_equal(back.prompt_ids, g.prompt_ids)
    for a, b in zip(g.responses, back.responses):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        np.testing.assert_array_equal(a.logprobs, b.logprobs)  # bit-exact: raw bytes, no float formatting
        assert (a.min_version, a.finish_reason, a.reward) == (b.min_version, b.finish_reason, b.reward)
    assert back.min_version == 3


def test_per_token_versions_round_trip():
    g = make_group(1)
    r = g.responses[0]
    r.versions = np.full(len(r.token_ids), r.min_version, dtype=np.int32)
    r.versions[-1] += 1
    back = roundtrip(g.to_wire())
    np.testing.assert_array_equal(back.responses[0].versions, r.versions)


def test_arrays_travel_as_raw_bytes():
    raw = encode("group", make_group().to_wire())
    obj = msgpack.unpackb(raw, raw=False)
    arr = obj["body"]["responses"][0]["logprobs"]
    assert isinstance(arr["data"], bytes) and arr["dtype"] == "<f4"


def reason_of(fn) -> str:
    with pytest.raises(ProtocolError) as info:
        fn()
    return info.value.reason


def mutate(change) -> str:
    body = make_group().to_wire()
    change(body)
    return reason_of(lambda: roundtrip(body))


def test_oversized():
    raw = encode("group", make_group().to_wire())
    assert reason_of(lambda: decode(raw, len(raw) - 1)) == "oversized"


def test_not_msgpack():
    assert reason_of(lambda: decode(b"\xc1\xc1\xc1", MAX)) == "not_msgpack"


def test_bad_envelope():
    assert reason_of(lambda: decode(msgpack.packb([1, 2, 3]), MAX)) == "bad_envelope"
    assert reason_of(lambda: decode(msgpack.packb({"type": "group", "schema": 1, "body": 5}), MAX)) == "bad_envelope"


def test_unknown_type():
    """The envelope carries any string type; the receiver, which knows what it takes, refuses the rest."""
    from asyncor.wire.messages import GrantRequest, parse

    msg = decode(msgpack.packb({"type": "pickle", "schema": SCHEMA_VERSION, "body": {}}), MAX)
    assert reason_of(lambda: parse(msg, GrantRequest)) == "unknown_type"


def test_type_not_a_string():
    for bad in ([], {}, 3, None, b"group"):
        raw = msgpack.packb({"type": bad, "schema": SCHEMA_VERSION, "body": {}}, use_bin_type=True)
        assert reason_of(lambda: decode(raw, MAX)) == "bad_envelope"


def test_every_msgpack_type_in_every_envelope_field_is_refused_or_taken():
    """Issue 26: any value in type, schema or body: decode refuses it with the reason for that field, or takes
    it (a string type, a map body); nothing else is raised, not even for a list nested 1000 deep."""
    from benchmarks.wire_fuzz import SAMPLES

    reasons = {"type": "bad_envelope", "schema": "schema_mismatch", "body": "bad_envelope"}
    for field, reason in reasons.items():
        for kind, samples in SAMPLES.items():
            for value in samples:
                raw = msgpack.packb({"type": "ack", "schema": SCHEMA_VERSION, "body": {}, field: value},
                                    use_bin_type=True)
                try:
                    msg = decode(raw, MAX)
                except ProtocolError as exc:
                    assert exc.reason in (reason, "not_msgpack"), (field, kind, exc)
                    continue
                assert (field, type(value)) in (("type", str), ("body", dict)), (field, kind)
                assert type(getattr(msg, field)) is type(value)


def test_schema_mismatch():
    raw = msgpack.packb({"type": "group", "schema": SCHEMA_VERSION + 1, "body": {}})
    assert reason_of(lambda: decode(raw, MAX)) == "schema_mismatch"


def test_bad_field():
    assert mutate(lambda b: b.pop("seq")) == "bad_field"
    assert mutate(lambda b: b.update(seq="11")) == "bad_field"
    assert mutate(lambda b: b.update(actor_id=True)) == "bad_field"
    assert mutate(lambda b: b.update(prompt_ids=[1, 2, 3])) == "bad_field"


def test_bad_array():
    assert mutate(lambda b: b["responses"][0]["logprobs"].update(dtype="<f8")) == "bad_array"
    assert mutate(lambda b: b["prompt_ids"].update(shape=[6])) == "bad_array"
    assert mutate(lambda b: b["prompt_ids"].update(data=b"abc")) == "bad_array"
    assert mutate(lambda b: b.update(prompt_ids={"dtype": "<i4", "shape": [1]})) == "bad_array"


def test_length_mismatch():
    def change(b):
        r = b["responses"][1]
        r["logprobs"] = pack_array(np.zeros(len(r["token_ids"]["shape"]) + 20, dtype=np.float32) - 1)
    assert mutate(change) == "length_mismatch"


def test_non_finite():
    def nan_logprob(b):
        r = b["responses"][0]
        n = r["token_ids"]["shape"][0]
        lp = np.full(n, -0.5, dtype=np.float32)
        lp[0] = np.nan
        r["logprobs"] = pack_array(lp)
    assert mutate(nan_logprob) == "non_finite"
    assert mutate(lambda b: b["responses"][0].update(reward=float("inf"))) == "non_finite"


def test_bad_value():
    assert mutate(lambda b: b["responses"][0].update(finish_reason="tired")) == "bad_value"
    assert mutate(lambda b: b["responses"][0].update(min_version=-1)) == "bad_value"
    assert mutate(lambda b: b.update(responses=[])) == "bad_value"
    assert mutate(lambda b: b.update(prompt_id=-4)) == "bad_value"
    assert mutate(lambda b: b.update(seq=2**63)) == "bad_value"  # ids stay below 2**62 (a Welcome adds to seq)

    def positive_logprob(b):
        r = b["responses"][0]
        r["logprobs"] = pack_array(np.full(r["token_ids"]["shape"][0], 0.5, dtype=np.float32))
    assert mutate(positive_logprob) == "bad_value"


def test_group_larger_than_configured_group_size_is_refused():
    body = make_group(4).to_wire()
    with pytest.raises(ProtocolError) as info:
        parse_group(body, max_group_size=3)
    assert info.value.reason == "bad_value"


def test_every_reason_is_tested():
    tested = {"oversized", "not_msgpack", "bad_envelope", "unknown_type", "schema_mismatch", "bad_field",
              "bad_array", "length_mismatch", "non_finite", "bad_value"}
    assert tested == set(REJECT_REASONS)
