"""Issue 14 item 3: the broadcast group survives actors that die, hang and come back.

Real processes (tests/integration/receiver_worker.py: one actor's receiver thread each), a real gloo
group, the learner's WeightBroadcaster in the test. An actor SIGKILLed or frozen (SIGSTOP, the silent hang)
costs the learner at most one deadline; the live actor gets every version; a restarted actor (same id, new
process) rejoins and gets the current weights on joining; a frozen one that wakes up rejoins by itself.
"""

import os
import signal
import subprocess
import sys
import time

import torch

from asyncor.launcher.ports import free_port
from asyncor.sync.broadcaster import WeightBroadcaster
from asyncor.wire.zeromq import ZmqTransport
from asyncor.sync.buckets import plan_buckets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 3.0  # sync.timeout_s of this test: every failure must cost at most about this long


def start_receiver(actor_id, ports, out):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.Popen([sys.executable, "-m", "tests.integration.receiver_worker", "--actor-id", str(actor_id),
                             "--ports", ports, "--out", str(out), "--timeout-s", str(TIMEOUT_S)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(str(out) + ".log", "w"))


def staged(out):
    """[(version, weight sum)] one incarnation (or several appending to one file) staged."""
    if not os.path.exists(out):
        return []
    with open(out) as f:
        return [(int(v), float(s)) for v, s in (line.split() for line in f if line.strip())]


def wait_until(pred, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def weights(version):
    return torch.full((1000,), float(version)), torch.arange(7, dtype=torch.float32) * version


def sync(b, version):
    """One sync as learner/weight_sync.py's publish does it; True if it went through."""
    big, small = weights(version)
    buckets = plan_buckets([("big", [1000], torch.float32), ("small", [7], torch.float32)], 1 << 20)
    if not b.begin(version, buckets):
        return False
    for flat in (torch.cat([big, small]),):
        if not b.send(flat):
            return False
    b.done()
    return True


def expected_sum(version):
    big, small = weights(version)
    return float(big.double().sum() + small.double().sum())


def test_dead_hung_and_restarted_actors_never_stop_the_weight_sync(tmp_path):
    sync_port, store_port = free_port(), free_port()
    ports = f"{sync_port},{store_port}"
    out = [tmp_path / "actor0.txt", tmp_path / "actor1.txt"]
    procs = [start_receiver(i, ports, out[i]) for i in range(2)]
    # TIMEOUT_S bounds the weight sync, not process start-up: a Python process importing torch takes seconds on a
    # busy 2-core host (the first hellos missed a 3 s deadline there), so the group is made once both have started.
    wait_until(lambda: all(os.path.exists(f"{o}.ready") for o in out), 120, "both receiver processes to start")
    b = WeightBroadcaster(ZmqTransport(), "127.0.0.1", sync_port, store_port, 2, "gloo", TIMEOUT_S,
                          torch.device("cpu"), max_failures=3)
    figures = {}
    try:
        assert b.actors.keys() == {0, 1} and sync(b, 1)
        wait_until(lambda: all(staged(o) == [(1, expected_sum(1))] for o in out), 10, "version 1 at both")

        # 1. actor 1 killed: the next sync fails fast or goes to actor 0 alone; then actor 0 gets it.
        procs[1].kill()
        procs[1].wait()
        killed = time.monotonic()
        if not sync(b, 2):
            assert b.needs_sync()
            assert sync(b, 2)  # the resync the learner runs while it waits for a batch
        wait_until(lambda: staged(out[0])[-1] == (2, expected_sum(2)), 10, "version 2 at actor 0")
        figures["kill_to_weights_s"] = time.monotonic() - killed
        assert b.actors.keys() == {0} and figures["kill_to_weights_s"] < TIMEOUT_S + 2

        # 2. actor 1 restarted (new process, same id): it says hello, gets the current version on joining.
        procs[1] = start_receiver(1, ports, out[1])
        restarted = time.monotonic()
        wait_until(b.needs_sync, 60, "the restarted actor's hello")
        assert sync(b, 2)
        wait_until(lambda: staged(out[1])[-1] == (2, expected_sum(2)), 10, "version 2 at the restarted actor")
        figures["restart_to_weights_s"] = time.monotonic() - restarted
        assert b.actors.keys() == {0, 1}
        assert sync(b, 3)
        wait_until(lambda: all(staged(o)[-1] == (3, expected_sum(3)) for o in out), 10, "version 3 at both")
        assert [v for v, _ in staged(out[0])] == [1, 2, 3]  # version 2 sent again, staged once

        # 3. actor 1 frozen (connection open, never answers: a hung collective): one deadline, then without it.
        os.kill(procs[1].pid, signal.SIGSTOP)
        frozen = time.monotonic()
        went_through = sync(b, 4)
        figures["hang_first_sync_s"] = time.monotonic() - frozen
        assert not went_through and figures["hang_first_sync_s"] < TIMEOUT_S + 2
        assert sync(b, 4)  # the probe finds actor 1 silent: the group is actor 0 alone
        figures["hang_to_weights_s"] = time.monotonic() - frozen
        wait_until(lambda: staged(out[0])[-1] == (4, expected_sum(4)), 10, "version 4 at actor 0")
        assert b.actors.keys() == {0}

        # ... and woken up: its broken collective fails, it says hello again and is back for the next version.
        os.kill(procs[1].pid, signal.SIGCONT)
        wait_until(b.needs_sync, 60, "the woken actor's hello")
        assert sync(b, 5)
        wait_until(lambda: all(staged(o)[-1] == (5, expected_sum(5)) for o in out), 10, "version 5 at both")
        assert b.actors.keys() == {0, 1}
        assert [v for v, _ in staged(out[0])] == [1, 2, 3, 4, 5]
        assert b.stats["actors_dropped"] == 2 and b.refused == 0
        print("weight-sync recovery:", {k: round(v, 2) for k, v in figures.items()}, b.stats)
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.wait()
        b.close()
