"""launcher/restarts.py: back-off doubles per actor, is capped, and restarts run out."""

import time

from asyncor.launcher.restarts import MAX_BACKOFF_S, ActorRestarts


def test_backoff_doubles_per_actor_is_capped_and_restarts_run_out():
    r = ActorRestarts(max_restarts=8, backoff_s=2.0)
    delays = [r.schedule("actor1", -9) for _ in range(8)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, MAX_BACKOFF_S, MAX_BACKOFF_S, MAX_BACKOFF_S]
    assert r.schedule("actor1", -9) is None  # used up
    assert r.schedule("actor0", 1) == 2.0  # counted per actor
    assert r.summary()["per_actor"] == {"actor1": 8, "actor0": 1}
    assert [e["returncode"] for e in r.summary()["events"]][-1] == 1


def test_a_restart_is_ready_once_its_wait_is_over():
    r = ActorRestarts(max_restarts=1, backoff_s=0.2)
    assert r.schedule("actor0", -9) == 0.2
    assert r.ready() == []
    time.sleep(0.25)
    assert r.ready() == ["actor0"] and r.ready() == []
    assert ActorRestarts(max_restarts=0, backoff_s=1.0).schedule("actor0", -9) is None
