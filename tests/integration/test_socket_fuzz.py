"""Property-based fuzzing (hypothesis) of the other listening sockets (issue 14 items 1-2), over real ZeroMQ:
the launcher's telemetry collector and the learner's weight-announcement port. Every hostile message is
refused and counted, nothing hostile is written, and honest traffic is still served afterwards.
(The buffer's two ports: test_buffer_fuzz.py. Actors listen on nothing: their sockets only connect out.)
`ASYNCOR_LONG_FUZZ=1` runs ten times more examples."""

import json
import math
import os

import msgpack
import pytest
import torch
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncor.wire.zeromq import ZmqTransport
from asyncor.sync.receiver import WeightReceiver
from asyncor.wire.envelope import SCHEMA_VERSION, encode
from asyncor.launcher.ports import free_port, free_ports
from asyncor.sync.broadcaster import WeightBroadcaster
from asyncor.sync.buckets import plan_buckets
from asyncor.launcher.collector import Collector
from asyncor.telemetry.link import LauncherLink
from tests.integration.test_buffer_fuzz import envelope_grid, odd_envelopes, plain, weird
from tests.integration.test_weight_sync_hostile import start_broadcaster

pytestmark = pytest.mark.slow
EXAMPLES = 1000 * (10 if os.environ.get("ASYNCOR_LONG_FUZZ") == "1" else 1)
SETTINGS = dict(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
RECORD = {"ts": 1.0, "role": "learner", "step": 1, "learner/loss": 0.5}


def envelope(types):
    """Envelopes of these types (or of any other value as a type, or with any schema) with any body."""
    return st.fixed_dictionaries({"type": st.sampled_from(types) | weird,
                                  "schema": st.just(SCHEMA_VERSION) | weird, "body": plain})


def flood(sock, strategy) -> int:
    """Send EXAMPLES hostile messages drawn from `strategy` on `sock`; how many went out."""
    sent = [0]

    @settings(max_examples=EXAMPLES, **SETTINGS)
    @given(strategy)
    def one(raw):
        sock.send(raw)
        sent[0] += 1

    one()
    return sent[0]


def collector_hostile():
    bad_records = st.one_of(
        st.sampled_from(["ts", "role"]).map(lambda k: {x: v for x, v in RECORD.items() if x != k}),  # required
        st.tuples(st.sampled_from(["ts", "role", "step"]), weird)
        .filter(lambda kv: not (kv[0] == "ts" and type(kv[1]) in (int, float))
                and not (kv[0] == "step" and (kv[1] is None or (type(kv[1]) is int and 0 <= kv[1] < 2**63)
                                              # NaN / inf become null (JSON has none): a step of null is valid
                                              or (type(kv[1]) is float and not math.isfinite(kv[1]))))
                and not (kv[0] == "role" and kv[1] in ("learner", "buffer", "eval")))
        .map(lambda kv: {**RECORD, kv[0]: kv[1]}),
        st.text(min_size=1, max_size=8).filter(lambda k: "/" not in k and k not in RECORD)
        .map(lambda k: {**RECORD, k: 1}),  # a metric without role/
        st.integers(2**63, 2**64 - 1).map(lambda n: {**RECORD, "learner/x": n}),
        st.just({**RECORD, "learner/deep": [[[[[[[1]]]]]]]}),
        st.just({**RECORD, "learner/long": "x" * 5000}),
        weird.filter(lambda v: not isinstance(v, dict)),  # not a map at all
    )
    bad_summaries = st.one_of(
        st.text(max_size=12).filter(lambda r: r not in ("learner", "buffer", "prepare", "eval_before", "eval_after")
                                    and not (r.startswith("actor") and r[5:].isdigit()))
        .map(lambda r: {"role": r, "summary": {}}),
        weird.filter(lambda v: not isinstance(v, dict)).map(lambda s: {"role": "learner", "summary": s}),
    )
    return st.one_of(
        st.binary(max_size=64).filter(lambda b: not b or not (0x80 <= b[0] <= 0x8f or b[0] in (0xde, 0xdf))),
        plain.map(lambda obj: msgpack.packb(obj, use_bin_type=True)).filter(lambda b: b[:1] != b"\x83"),
        envelope(["hello", "group", "grant", "nonsense", "weights"]).map(lambda e: msgpack.packb(e, use_bin_type=True)),
        odd_envelopes("metrics"),
        bad_records.map(lambda r: encode("metrics", {"record": r})),
        bad_summaries.map(lambda b: encode("summary", {**b, "rid": 1})),
        st.integers(SCHEMA_VERSION + 1, 2**31).map(lambda s: msgpack.packb({"type": "metrics", "schema": s, "body": {"record": RECORD}})),
    )  # (oversized messages never reach the collector's code: ZeroMQ drops them, MAXMSGSIZE)


def test_fuzzed_telemetry_is_refused_and_never_written(tmp_path):
    import time

    port = free_port()
    collector = Collector(str(tmp_path), "127.0.0.1", port).start()
    evil = zmq.Context.instance().socket(zmq.DEALER)
    evil.setsockopt(zmq.LINGER, 0)
    evil.connect(f"tcp://127.0.0.1:{port}")
    sent = [0]
    try:
        for raw in envelope_grid("summary"):
            evil.send(raw)
        sent[0] = len(envelope_grid("summary")) + flood(evil, collector_hostile())
        deadline = time.monotonic() + 60
        while sum(collector.refused.values()) < sent[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(collector.refused.values()) == sent[0], (sent[0], dict(collector.refused))
        link = LauncherLink(f"tcp://127.0.0.1:{port}")
        assert link.summary("learner", {"steps": 3}, 30.0)  # still served after the storm
        assert collector.records == 0 and os.path.getsize(tmp_path / "metrics.jsonl") == 0
        assert os.listdir(tmp_path / "roles") == ["learner.json"]
        with open(tmp_path / "roles" / "learner.json") as f:
            assert json.load(f) == {"steps": 3}
        print(f"collector fuzz: {sent[0]} hostile messages, all refused: {dict(collector.refused)}")
    finally:
        evil.close()
        collector.stop()


def announcement_hostile():
    hello = {"type": "receiver_hello", "schema": SCHEMA_VERSION, "body": {"actor_id": 0}}
    return st.one_of(
        st.binary(max_size=64),
        plain.map(lambda obj: msgpack.packb(obj, use_bin_type=True)),
        envelope(["receiver_hello", "here", "weights", "group", "nonsense"]).map(lambda e: msgpack.packb(e, use_bin_type=True)),
        odd_envelopes("receiver_hello"),
        weird.map(lambda a: msgpack.packb({**hello, "body": {"actor_id": a}}, use_bin_type=True)),
        st.just(msgpack.packb(hello)),  # actor 0's hello, from a socket that is not actor 0's receiver
        st.integers(1, 2**31).map(lambda a: encode("receiver_hello", {"actor_id": a})),  # actors that do not exist
    )


def test_every_fuzzed_hello_is_refused():
    """The announcement port's check, on each hostile message as it arrives from a socket that is not an
    actor's receiver (the live test below shows it on the wire)."""
    b = WeightBroadcaster.__new__(WeightBroadcaster)
    b.num_actors, b.members, b.joining, b.refused, b.epoch = 1, {}, {}, 0, 0

    def refused(raw, ident):
        before = b.refused
        answers = {}
        b._handle(ident, raw, answers=answers)
        assert b.refused == before + 1
        assert b.members == {} and b.joining == {} and answers == {}

    for raw in envelope_grid("receiver_hello"):  # from the real receiver's identity: the fields refuse them
        refused(raw, b"actor0/weights")

    @settings(max_examples=EXAMPLES * 5, **SETTINGS)
    @given(announcement_hostile(), st.sampled_from([b"actor0/weightz", b"actor0/weights2", b"x", b""]))
    def one(raw, ident):
        refused(raw, ident)

    one()


def test_fuzzed_hellos_cannot_join_the_broadcast_and_the_real_actor_still_gets_the_weights():
    sync_port, store_port = free_ports(2)
    ctx = zmq.Context.instance()
    learner, made = start_broadcaster(sync_port, store_port, 60.0)
    evil = ctx.socket(zmq.DEALER)
    evil.setsockopt(zmq.LINGER, 0)
    evil.setsockopt(zmq.IDENTITY, b"actor0/weightz")
    evil.connect(f"tcp://127.0.0.1:{sync_port}")
    sent = [flood(evil, announcement_hostile())]
    receiver = WeightReceiver(ZmqTransport(), 0, "127.0.0.1", sync_port, store_port, "gloo", 60.0, torch.device("cpu"))
    receiver.start()
    learner.join(timeout=120)
    broadcaster = made["b"]
    try:
        # The group is built from the one real hello; every hostile message, read while the group formed or
        # when the sync drains the port, is refused and counted.
        assert broadcaster.actors == {0: b"actor0/weights"}
        weight = torch.arange(6, dtype=torch.float32)
        assert broadcaster.begin(1, plan_buckets([("w", [6], torch.float32)], 1 << 20))
        assert broadcaster.send(weight)
        staged = receiver.wait_for(1, 30.0)
        assert staged is not None and torch.equal(dict(staged.tensors)["w"], weight)
        assert broadcaster.refused == sent[0] and broadcaster.actors == {0: b"actor0/weights"}
        print(f"announcement fuzz: {sent[0]} hostile hellos sent, {broadcaster.refused} refused, none joined")
    finally:
        receiver.stop()
        broadcaster.close()
        evil.close()
