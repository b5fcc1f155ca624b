"""The learner's announcement port takes messages from anything that can reach it (issue 14, item 1): bad
hellos are refused and counted, never fatal, and cannot take an actor's place in the broadcast."""

import threading

import msgpack
import torch
import zmq

from asyncor.sync.receiver import WeightReceiver
from asyncor.wire.envelope import SCHEMA_VERSION, encode
from asyncor.launcher.ports import free_port, free_ports
from asyncor.sync.broadcaster import WeightBroadcaster
from asyncor.wire.zeromq import ZmqTransport
from asyncor.sync.buckets import plan_buckets


def start_broadcaster(sync_port, store_port, timeout_s):
    """A one-actor WeightBroadcaster forming in a thread (it waits for the actor); made["b"] once formed."""
    made = {}
    thread = threading.Thread(target=lambda: made.update(b=WeightBroadcaster(
        ZmqTransport(), "127.0.0.1", sync_port, store_port, 1, "gloo", timeout_s, torch.device("cpu"))),
        daemon=True)
    thread.start()
    return thread, made


def test_bad_hellos_are_refused_and_the_real_actor_still_gets_the_weights():
    sync_port, store_port = free_ports(2)
    ctx = zmq.Context.instance()
    learner, made = start_broadcaster(sync_port, store_port, 30.0)
    hostile = []
    for identity, frames in [
        (b"x", [b"\x00garbage"]),  # not msgpack
        (b"y", [b"", encode("receiver_hello", {"actor_id": 0})]),  # REQ-style frames, wrong identity
        (b"actor0/weights2", [encode("receiver_hello", {"actor_id": 0})]),  # someone else claiming actor 0
        (b"actor7/weights", [encode("receiver_hello", {"actor_id": 7})]),  # an actor that does not exist
        (b"actor0/weightz", [msgpack.packb({"type": "receiver_hello", "schema": SCHEMA_VERSION, "body": {"actor_id": "0"}})]),
        (b"z", [encode("weights", {"actor_id": 0})]),
    ]:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, identity)
        s.connect(f"tcp://127.0.0.1:{sync_port}")
        s.send_multipart(frames)
        hostile.append(s)
    receiver = WeightReceiver(ZmqTransport(), 0, "127.0.0.1", sync_port, store_port, "gloo", 30.0, torch.device("cpu"))
    receiver.start()
    learner.join(timeout=60)
    broadcaster = made["b"]
    try:
        assert broadcaster.refused == len(hostile)
        assert broadcaster.actors == {0: b"actor0/weights"}
        weight = torch.arange(6, dtype=torch.float32)
        buckets = plan_buckets([("w", [6], torch.float32)], 1 << 20)
        assert broadcaster.begin(3, buckets) and broadcaster.send(weight)
        staged = receiver.wait_for(3, 30.0)
        assert staged is not None and torch.equal(dict(staged.tensors)["w"], weight)
    finally:
        receiver.stop()
        broadcaster.close()
        for s in hostile:
            s.close(linger=0)


class _BigBucket:
    def to_wire(self):
        return {"blob": b"x" * (1 << 20)}


def announcer(port, timeout_s, max_failures=3):
    """The announcement side of a WeightBroadcaster (its socket as __init__ makes it) with actor 0 in a
    group that needs no collective (no store, no process group)."""
    from asyncor.telemetry import log as tlog

    b = WeightBroadcaster.__new__(WeightBroadcaster)
    b.listener = ZmqTransport().listen(f"tcp://127.0.0.1:{port}")
    b.log, b.num_actors, b.timeout_s, b.max_failures = tlog.get("test"), 1, timeout_s, max_failures
    b.members, b.joining, b.refused, b.epoch, b.failures, b.dirty = {0: b"actor0/weights"}, {}, 0, 1, 0, False
    b.stats = {"regroups": 0, "failed_syncs": 0, "actors_dropped": 0, "rejoined": 0}
    b.pg = object()  # stands for the group: announcements only
    return b


def test_an_actor_that_stops_reading_or_vanishes_is_dropped_within_the_deadline_not_a_hang():
    """Issue 14 items 3 and 6: an announcement to an actor whose receiver stopped reading (its queue full) or
    went away fails within sync.timeout_s, names it, drops it from the group; training goes on without it.
    Only `sync.max_failures` failures in a row are fatal."""
    import time

    import pytest

    port = free_port()
    b = announcer(port, timeout_s=1.0)
    peer = zmq.Context.instance().socket(zmq.DEALER)
    peer.setsockopt(zmq.IDENTITY, b"actor0/weights")
    peer.setsockopt(zmq.RCVHWM, 1)
    peer.setsockopt(zmq.RCVBUF, 4096)
    peer.connect(f"tcp://127.0.0.1:{port}")
    peer.send(encode("receiver_hello", {"actor_id": 0}))
    assert b.listener.readable(5.0)
    b.listener.recv()
    start = time.monotonic()
    version = 1
    while b.begin(version, [_BigBucket()]):
        version += 1
        assert time.monotonic() - start < 30
    assert time.monotonic() - start < 30
    assert b.members == {} and b.dirty and b.failures == 1 and b.stats["actors_dropped"] == 1
    peer.close(linger=0)
    b.listener.close()
    # A receiver that said hello and went away: the announcement fails at once; in a row, fatal.
    port = free_port()
    b = announcer(port, timeout_s=1.0, max_failures=1)
    peer = zmq.Context.instance().socket(zmq.DEALER)
    peer.setsockopt(zmq.IDENTITY, b"actor0/weights")
    peer.connect(f"tcp://127.0.0.1:{port}")
    peer.send(encode("receiver_hello", {"actor_id": 0}))
    assert b.listener.readable(5.0)
    b.listener.recv()
    peer.close(linger=0)
    time.sleep(0.5)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"weight sync failed 1 times in a row .*actors \[0\] took no announcement"):
        b.begin(1, [])
    assert time.monotonic() - start < 1.0
    b.listener.close()
