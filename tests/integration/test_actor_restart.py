"""Issue 14 item 3, end to end: SIGKILL an actor mid-generation; training goes on; the launcher restarts it;
it rejoins the broadcast, gets the current weights before generating, its grants are reissued, and the ledger
adds up (real vLLM actors, ZeroMQ buffer, gloo broadcast, learner; `launch.py run`)."""

import json
import os
import signal
import subprocess
import time
from datetime import datetime

import pytest

from tests.integration.test_pipeline import ROOT, children_of, cmdline, launch_args, metrics

pytestmark = pytest.mark.slow


def log_events(run_dir, role):
    with open(os.path.join(run_dir, "logs", f"{role}.jsonl")) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def ts(event):
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def test_a_killed_actor_is_restarted_and_rejoins_with_the_current_weights(tmp_path):
    run_dir = os.path.join(tmp_path, "restart")
    steps = 80
    proc = subprocess.Popen(launch_args(tmp_path, "restart", "--set", f"learner.steps={steps}",
                                        "--set", "actors.count=2", "--set", "buffer.max_staleness=1",
                                        "--set", "actors.restart_backoff_s=1", "--set", "sync.timeout_s=30",
                                        "--set", "run.max_wall_s=400"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:  # kill actor 1 once the learner has trained two steps: it is generating
            path = os.path.join(run_dir, "metrics.jsonl")
            done = [r for r in (metrics(run_dir) if os.path.exists(path) else []) if r.get("learner/step")]
            if len(done) >= 2:
                break
            assert proc.poll() is None and time.monotonic() < deadline, "the run never reached its second step"
            time.sleep(0.3)
        actor1 = [p for p in children_of(run_dir) if "-m asyncor.actors " in cmdline(p) and "--actor-id 1" in cmdline(p)]
        assert len(actor1) == 1
        os.kill(actor1[0], signal.SIGKILL)
        killed_at = time.time()
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "actor1 on localhost exited with code -9; restarting it in 1 s (restart 1 of" in err

    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["learner"]["steps"] == steps
    assert summary["actor_restarts"]["per_actor"] == {"actor1": 1}
    assert summary["ledger"]["unaccounted"] == 0 and summary["staleness"]["max"] <= 1
    assert summary["sync"]["regroups"] >= 2  # a group without actor 1, then one with it again
    buffer = json.load(open(os.path.join(run_dir, "roles", "buffer.json")))
    assert buffer["actor_restarts"] == {"1": 1}

    # The restarted actor caught up to the learner's version before generating, then produced groups.
    events = log_events(run_dir, "actor1")
    restarted = next(e for e in events if e["event"] == "restarted")
    caught_up = next(e for e in events if e["event"] == "caught_up")
    assert caught_up["version"] >= restarted["learner_version"] >= 2
    assert ts(restarted) > killed_at
    actor1 = json.load(open(os.path.join(run_dir, "roles", "actor1.json")))  # written by the new incarnation
    assert actor1["versions_loaded"][1] >= restarted["learner_version"] and actor1["groups"] > 0
    # Training went on meanwhile: learner steps between the kill and the restarted actor's catch-up.
    learner_steps = [r for r in metrics(run_dir) if r.get("learner/step")]
    during = [r for r in learner_steps if killed_at < r["ts"] < ts(caught_up)]
    first_after = min(r["ts"] for r in learner_steps if r["ts"] > killed_at)
    figures = {"kill_to_next_learner_step_s": first_after - killed_at,
               "kill_to_restarted_hello_s": ts(restarted) - killed_at,
               "kill_to_caught_up_s": ts(caught_up) - killed_at,
               "learner_steps_meanwhile": len(during),
               "sync": {k: summary["sync"][k] for k in ("regroups", "failed_syncs", "actors_dropped")}}
    print("actor restart:", json.dumps(figures))
    assert len(during) >= 1  # the learner did not wait for the dead actor
