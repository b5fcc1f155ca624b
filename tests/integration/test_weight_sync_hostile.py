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


def test_bad_hellos_are_refused_and_the_real_actor_still_gets_the_weights():
    sync_port, store_port = free_port(), free_port()
    ctx = zmq.Context.instance()
    made = {}
    learner = threading.Thread(target=lambda: made.update(b=WeightBroadcaster(
        ctx, "127.0.0.1", sync_port, store_port, 1, "gloo", 30.0, torch.device("cpu"))), daemon=True)
    learner.start()
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
