"""wire/messages.py: every message type round-trips, and a body that does not fit is refused with the
reason receivers count, never another exception."""

import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncor.wire import messages as wire
from asyncor.wire.arrays import unpack_array
from asyncor.wire.envelope import ProtocolError, decode, encode
from asyncor.wire.messages import encode_message
from benchmarks.wire_fuzz import MESSAGES

MAX = 1 << 20

EXAMPLES = MESSAGES  # one valid example of every message type


def test_every_message_type_has_an_example():
    assert set(wire.Body.__subclasses__()) == set(EXAMPLES)


def test_every_message_type_has_a_tag_of_its_own():
    tags = [kind.TYPE for kind in wire.Body.__subclasses__()] + [wire.TRAJECTORY_GROUP]
    assert len(tags) == len(set(tags)), sorted(t for t in tags if tags.count(t) > 1)


@pytest.mark.parametrize("kind", list(EXAMPLES), ids=lambda k: k.__name__)
def test_every_message_round_trips_through_the_wire(kind):
    sent = EXAMPLES[kind]
    received = wire.parse(decode(encode_message(sent), MAX), kind)
    assert received == sent


def test_arrays_stay_raw_bytes_on_the_wire():
    grant = EXAMPLES[wire.GrantReply]
    raw = msgpack.unpackb(encode_message(grant), raw=False)
    assert isinstance(raw["body"]["prompts"][0]["token_ids"]["data"], bytes)
    back = wire.parse(decode(encode_message(grant), MAX), wire.GrantReply)
    assert unpack_array(back.prompts[0].token_ids, "token_ids", "<i4").tolist() == [0, 1, 2, 3, 4]


def reason(kind, body, type_=None):
    with pytest.raises(ProtocolError) as err:
        wire.parse(decode(encode(type_ or kind.TYPE, body), MAX), kind)
    return err.value.reason


def test_bodies_that_do_not_fit_are_refused_with_the_reason_counted():
    assert reason(wire.GrantRequest, {"actor_id": 0}) == "bad_field"  # missing
    assert reason(wire.GrantRequest, {"actor_id": True, "max_prompts": 1}) == "bad_field"  # a bool is no int
    assert reason(wire.GrantRequest, {"actor_id": 0, "max_prompts": 1.0}) == "bad_field"
    assert reason(wire.GrantRequest, {"actor_id": 0, "max_prompts": -3}) == "bad_value"
    assert reason(wire.GrantRequest, {"actor_id": 0, "max_prompts": 1, "hold_s": 99.0}) == "bad_value"
    assert reason(wire.GrantRequest, {"actor_id": 0, "max_prompts": 1, "hold_s": math.nan}) == "bad_value"
    assert reason(wire.GrantReturn, {"actor_id": 0, "prompt_ids": [1, "2"]}) == "bad_field"
    assert reason(wire.Join, {"epoch": 1, "rank": 1, "world_size": 1}) == "bad_value"
    assert reason(wire.Announcement, {"epoch": 1, "version": 1, "buckets": [
        {"dtype": "complex128", "names": [], "shapes": []}]}) == "bad_value"
    assert reason(wire.BatchRequest, {"version": 1, "n_groups": 2}, type_="version") == "unknown_type"
    assert reason(wire.Bye, {"actor_id": 0, "stats": [1]}) == "bad_field"
    # Unknown fields (the request id every request carries) are ignored.
    assert wire.parse(decode(encode("actor_hello", {"actor_id": 1, "rid": 4, "extra": "x"}), MAX), wire.ActorHello) \
        == wire.ActorHello(actor_id=1)


from tests.unit.test_wire_fuzz import values  # noqa: E402  (every msgpack type: ext, timestamp, deep, ...)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(EXAMPLES)), st.data())
def test_any_body_either_parses_within_its_bounds_or_is_refused(kind, data):
    """Random bodies, and valid ones with one field replaced by anything: ProtocolError or a checked message."""
    base = msgpack.unpackb(encode_message(EXAMPLES[kind]), raw=False)["body"]
    if base and data.draw(st.booleans()):
        body = dict(base)
        body[data.draw(st.sampled_from(sorted(base)))] = data.draw(values)
    else:
        body = data.draw(st.dictionaries(st.text(max_size=10), values, max_size=5))
    try:
        m = wire.parse(decode(encode(kind.TYPE, body), MAX), kind)
    except ProtocolError as exc:
        assert exc.reason in ("bad_field", "bad_value", "not_msgpack")  # (not msgpack: a map keyed by ints)
        return
    for name in ("actor_id", "version", "epoch", "seq_start", "max_prompts", "min_version"):
        value = getattr(m, name, 0)
        assert type(value) is int and value >= 0, (name, value)
    if isinstance(m, wire.GrantRequest):
        assert 0.0 <= m.hold_s <= wire.MAX_GRANT_HOLD_S
