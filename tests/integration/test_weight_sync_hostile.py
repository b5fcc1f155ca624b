"""The learner's announcement port takes messages from anything that can reach it (issue 14, item 1): bad
hellos are refused and counted, never fatal, and cannot take an actor's place in the broadcast."""

import threading

import msgpack
import torch
import zmq

from actors.weight_receiver import WeightReceiver
from buffer.protocol import encode
from launcher.ports import free_port
from learner.weight_sync import WeightBroadcaster, plan_buckets


def start_broadcaster(sync_port, store_port, timeout_s):
    """A one-actor WeightBroadcaster forming in a thread (it waits for the actor); made["b"] once formed."""
    made = {}
    thread = threading.Thread(target=lambda: made.update(b=WeightBroadcaster(
        zmq.Context.instance(), "127.0.0.1", sync_port, store_port, 1, "gloo", timeout_s, torch.device("cpu"))),
        daemon=True)
    thread.start()
    return thread, made


def test_bad_hellos_are_refused_and_the_real_actor_still_gets_the_weights():
    sync_port, store_port = free_port(), free_port()
    ctx = zmq.Context.instance()
    learner, made = start_broadcaster(sync_port, store_port, 30.0)
    hostile = []
    for identity, frames in [
        (b"x", [b"\x00garbage"]),  # not msgpack
        (b"y", [b"", encode("hello", {"actor_id": 0})]),  # REQ-style frames, wrong identity
        (b"actor-0-weights2", [encode("hello", {"actor_id": 0})]),  # someone else claiming actor 0
        (b"actor-7-weights", [encode("hello", {"actor_id": 7})]),  # an actor that does not exist
        (b"actor-0-weightz", [msgpack.packb({"type": "hello", "schema": 1, "body": {"actor_id": "0"}})]),
        (b"z", [encode("weights", {"actor_id": 0})]),
    ]:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, identity)
        s.connect(f"tcp://127.0.0.1:{sync_port}")
        s.send_multipart(frames)
        hostile.append(s)
    receiver = WeightReceiver(0, "127.0.0.1", sync_port, store_port, 2, "gloo", 30.0, torch.device("cpu"))
    receiver.start()
    learner.join(timeout=60)
    broadcaster = made["b"]
    try:
        assert broadcaster.refused == len(hostile)
        assert broadcaster.actors == {0: b"actor-0-weights"}
        weight = torch.arange(6, dtype=torch.float32)
        buckets = plan_buckets([("w", [6], torch.float32)], 1 << 20)
        broadcaster.announce(3, buckets)
        broadcaster.send(weight)
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


def announcer(port, timeout_s):
    """The announcement side of a WeightBroadcaster (its socket as __init__ makes it), without a group."""
    from buffer.transport import HWM

    b = WeightBroadcaster.__new__(WeightBroadcaster)
    b.sock = zmq.Context.instance().socket(zmq.ROUTER)
    b.sock.setsockopt(zmq.LINGER, 0)
    b.sock.setsockopt(zmq.SNDHWM, HWM)
    b.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    b.sock.bind(f"tcp://127.0.0.1:{port}")
    b.timeout_s, b.actors = timeout_s, {0: b"actor-0-weights"}
    return b


def test_an_actor_that_stops_reading_or_vanishes_is_an_error_naming_it_not_a_hang():
    """Issue 14 item 6: announcements used a blocking send; an actor whose receiver stopped reading
    blocked the learner for ever once its queue filled."""
    import time

    import pytest

    port = free_port()
    b = announcer(port, timeout_s=1.0)
    peer = zmq.Context.instance().socket(zmq.DEALER)
    peer.setsockopt(zmq.IDENTITY, b"actor-0-weights")
    peer.setsockopt(zmq.RCVHWM, 1)
    peer.setsockopt(zmq.RCVBUF, 4096)
    peer.connect(f"tcp://127.0.0.1:{port}")
    peer.send(encode("hello", {"actor_id": 0}))
    assert b.sock.poll(5000)
    b.sock.recv_multipart()
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="actor 0's weight receiver took no announcement"):
        for version in range(1, 10_000):
            b.announce(version, [_BigBucket()])
    assert time.monotonic() - start < 30
    peer.close(linger=0)
    b.sock.close(linger=0)
    # A receiver that said hello and went away: the announcement fails at once, naming it.
    port = free_port()
    b = announcer(port, timeout_s=1.0)
    peer = zmq.Context.instance().socket(zmq.DEALER)
    peer.setsockopt(zmq.IDENTITY, b"actor-0-weights")
    peer.connect(f"tcp://127.0.0.1:{port}")
    peer.send(encode("hello", {"actor_id": 0}))
    assert b.sock.poll(5000)
    b.sock.recv_multipart()
    peer.close(linger=0)
    time.sleep(0.5)
    with pytest.raises(RuntimeError, match="actor 0's weight receiver is gone"):
        b.announce(1, [])
    b.sock.close(linger=0)
