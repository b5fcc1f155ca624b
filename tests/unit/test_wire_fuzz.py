"""Every decode site is total (issue 26): whatever msgpack value sits in whatever field of whatever message,
the receiver's parsing raises ProtocolError (refused, counted) or accepts it, never anything else.

In-process and fast: the grid of benchmarks/wire_fuzz.py (every msgpack type in every field of every message
type, about 9000 messages in 2 s), then hypothesis over random bodies and random replacements of honest
ones, with the same msgpack types (`values`, also used by the socket-level fuzz in tests/integration).
The request/reply layer: a reply that does not decode or carries an odd request id is skipped and counted,
and a server echoes only an int request id."""

import os
import threading

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncor.launcher.ports import free_port
from asyncor.wire import messages as wire
from asyncor.wire.envelope import SCHEMA_VERSION, ProtocolError, decode, encode, request_id
from asyncor.wire.rpc import Client, Server
from asyncor.wire.trajectory import parse_batch
from asyncor.wire.zeromq import ZmqTransport
from benchmarks.wire_fuzz import EXAMPLES, SAMPLES, envelope, outcome, paths, replaced, run

EXAMPLE_COUNT = 1000 * (10 if os.environ.get("ASYNCOR_LONG_FUZZ") == "1" else 1)

# Every msgpack type: nil, bool, ints over msgpack's whole range, floats (NaN and inf included), str, bin,
# ext, timestamp; lists and maps of them, maps keyed by str, bytes (msgpack lets both through) or ints
# (refused when the envelope is decoded); and the samples nested 1000 deep.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.integers(-3, 3), st.floats(),
    st.text(max_size=8), st.binary(max_size=8),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 999_999_999)))
keys = st.one_of(st.text(max_size=6), st.binary(max_size=4), st.integers(-2, 2))
values = st.one_of(
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                 max_leaves=10),
    st.sampled_from([v for samples in SAMPLES.values() for v in samples]))
FUZZ = settings(max_examples=EXAMPLE_COUNT, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_the_grid_every_msgpack_type_in_every_field_of_every_message_crashes_nothing():
    table, crashes = run()
    assert crashes == []
    fuzzed = {type_ for type_, _, _ in table}
    assert fuzzed == {kind.TYPE for kind in wire.Body.__subclasses__()} | {wire.TRAJECTORY_GROUP}
    assert sum(sum(c.values()) for c in table.values()) > 8000
    for type_, body in EXAMPLES.items():  # the honest examples themselves are accepted
        assert outcome(type_, envelope(type_, body))[0] == "accepted", type_


@FUZZ
@given(st.sampled_from(sorted(EXAMPLES)), st.data())
def test_random_values_anywhere_are_refused_or_accepted_never_a_crash(type_, data):
    """An honest body with one field (at any depth) replaced by any value, a random body, or a random
    envelope: the receiver's parser refuses (ProtocolError) or accepts it."""
    body = EXAMPLES[type_]
    how = data.draw(st.sampled_from(["field", "field", "body", "envelope"]))
    if how == "field":
        path = data.draw(st.sampled_from(paths(body) or [("unknown",)]))  # (a body without fields: an extra one)
        raw = envelope(type_, replaced(body, path, data.draw(values)))
    elif how == "body":
        raw = envelope(type_, data.draw(st.dictionaries(st.sampled_from(sorted(body) or ["x"]) | keys, values,
                                                         max_size=5)))
    else:
        raw = envelope(data.draw(st.just(type_) | values), data.draw(values), data.draw(st.just(body) | values))
    result, error = outcome(type_, raw)
    assert result != "crashed", error


def test_schema_must_be_exactly_the_int():
    for schema in (True, 2.0, [2], {"v": 2}, "2", msgpack.ExtType(2, b""), None):
        with pytest.raises(ProtocolError) as err:
            decode(envelope("ack", {}, schema), 1 << 20)
        assert err.value.reason == "schema_mismatch", schema


def test_a_refusal_detail_is_short_whatever_the_value():
    deep = SAMPLES["deep"][0]
    with pytest.raises(ProtocolError) as err:
        decode(envelope(deep, {}), 1 << 20)
    assert err.value.reason == "bad_envelope" and len(err.value.detail) <= 310
    with pytest.raises(ProtocolError) as err:
        wire.parse(decode(encode("x" * 100_000, {}), 1 << 20), wire.Ack)
    assert err.value.reason == "unknown_type" and len(str(err.value)) < 400


def test_request_ids_are_ints_only():
    assert request_id({"rid": 7}) == 7 and request_id({"rid": 2**64 - 1}) == 2**64 - 1
    for odd in (True, [1], {"a": 1}, 1.0, "1", b"1", None, msgpack.ExtType(1, b"")):
        assert request_id({"rid": odd}) is None, odd
    assert request_id({}) is None


def batch(**changes) -> wire.Message:
    return decode(encode("batch", {**EXAMPLES["batch"], **changes}), 1 << 24)


def test_a_batch_is_checked_whole():
    groups, staleness, report = parse_batch(batch(), max_staleness=4)
    assert len(groups) == 1 and staleness == [1] and report == {"arrived": 3, "solve_all": 1, "solve_none": 0,
                                                                "accuracy_hist": [0, 2]}
    assert parse_batch(batch(groups_report=None), 4)[2] == {}
    refused = {
        "no groups": batch(groups=[], staleness=[]),
        "a staleness per group": batch(staleness=[1, 1]),
        "none staler than allowed": batch(staleness=[5]),
        "a report of counts": batch(groups_report={"arrived": "3"}),
        "groups that parse": batch(groups=[{"prompt_id": 1}]),
    }
    for what, msg in refused.items():
        try:
            parse_batch(msg, max_staleness=4)
        except ProtocolError:
            continue
        pytest.fail(f"a batch was accepted without {what}")


@pytest.fixture
def pair():
    """A real server socket and a client of it."""
    transport = ZmqTransport()
    address = f"tcp://127.0.0.1:{free_port()}"
    server = Server(transport.listen(address))
    client = Client(transport.connect(address, "actor0"), 1 << 20, "server")
    yield server, client
    client.close()
    server.close()
    transport.close()


def test_the_server_echoes_only_an_int_request_id(pair):
    server, client = pair
    for rid, echoed in ((5, 5), ([1], None), (True, None), ({"x": 1}, None), (1.5, None)):
        client.conn.send(msgpack.packb({"type": "ack", "schema": SCHEMA_VERSION, "body": {"rid": rid}}))
        assert server.listener.readable(5.0)
        peer, raw = server.recv()
        server.answer(peer, decode(raw, 1 << 20), wire.Ack())
        assert client.conn.readable(5.0)
        assert msgpack.unpackb(client.conn.recv())["body"]["rid"] == echoed


def answer_with(server: Server, replies) -> None:
    """Read one request and send `replies` (raw bytes, or None for the honest answer with its id)."""
    assert server.listener.readable(5.0)
    peer, raw = server.recv()
    rid = request_id(decode(raw, 1 << 20).body)
    for reply in replies:
        server.listener.send(peer, reply if reply is not None else encode("ack", {"status": "ok", "rid": rid}))


def test_a_client_skips_and_counts_replies_that_do_not_decode_or_carry_odd_ids(pair):
    server, client = pair
    junk = [b"\xc1", msgpack.packb([1]), encode("ack", {"rid": [1, 2]}), encode("ack", {"rid": {"a": 1}}),
            encode("ack", {"rid": True})]
    serving = threading.Thread(target=answer_with, args=(server, junk + [None]))
    serving.start()
    reply = client.request("ack", {}, 5.0)
    serving.join()
    assert request_id(reply.body) == 1 and dict(client.refused) == {"not_msgpack": 1, "bad_envelope": 1}
    # request_many takes the same path: a list or a map as a request id is skipped, not a crash (unhashable).
    serving = threading.Thread(target=lambda: [answer_with(server, junk[2:4] + [None]) for _ in range(2)])
    serving.start()
    replies = client.request_many("ack", [{}, {}], 5.0)
    serving.join()
    assert [request_id(r.body) for r in replies] == [2, 3]
