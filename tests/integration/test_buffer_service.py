"""The buffer role over real ZeroMQ sockets: malformed traffic is refused and
counted, good groups are kept and served whole, η is enforced end to end."""

import json
import threading
import time

import numpy as np
import pytest
from asyncor.buffer import state as buffer_state
from asyncor.buffer.service import BufferService
from asyncor.configs.schema import Config
from asyncor.launcher.ports import assign_ports
from asyncor.wire.arrays import unpack_array
from asyncor.wire.rpc import connect
from asyncor.wire.trajectory import Response, TrajectoryGroup
from asyncor.wire.transport import endpoint
from asyncor.wire.zeromq import ZmqTransport

from tests.conftest import write_tokenizer_dir

TIMEOUT = 10.0


def start_service(tmp_path, **overrides):
    model_dir = write_tokenizer_dir(tmp_path / "tok")
    settings = {
        "run": {"output_dir": str(tmp_path), "name": "buf"},
        "model": {"path": str(model_dir)},
        "actors": {"group_size": 2},
        "buffer": {"max_staleness": 0},
        "learner": {"prompts_per_step": 2},
        "net": {"request_timeout_s": 2.0},
    }
    for section, values in overrides.items():
        settings.setdefault(section, {}).update(values)
    config = Config.model_validate(settings)
    assign_ports(config)
    svc = BufferService(config)
    result = {}
    thread = threading.Thread(target=lambda: result.update(svc.run()), daemon=True)
    thread.start()
    net = config.net
    actor = connect(ZmqTransport(), endpoint(net.host, net.buffer_actor_port), "actor0", 1 << 24, "buffer")
    learner = connect(ZmqTransport(), endpoint(net.host, net.buffer_learner_port), "learner", 1 << 24, "buffer")
    return svc, actor, learner, result, thread


def stop_service(svc, thread, *clients):
    svc.stop_requested = True
    thread.join(timeout=5)
    for client in clients:
        client.close()


@pytest.fixture
def service(tmp_path):
    svc, actor, learner, result, thread = start_service(tmp_path)
    yield svc, actor, learner, result
    svc.stop_requested = True
    thread.join(timeout=5)
    actor.close()
    learner.close()


def group_for(prompt, seq, version=0, logprob=-0.5, rewards=(0.0, 1.0)):
    ids = unpack_array(prompt["token_ids"], "token_ids", "<i4")
    responses = [Response(np.array([5, 2], np.int32), np.array([logprob, -0.1], np.float32), version, "stop", r)
                 for r in rewards]
    return TrajectoryGroup(prompt["prompt_id"], ids, responses, actor_id=0, seq=seq, gen_time_s=0.1)


def test_bad_messages_are_counted_and_good_groups_survive(service):
    svc, actor, learner, _ = service
    actor.request("actor_hello", {"actor_id": 0}, TIMEOUT)
    learner.request("version", {"version": 0}, TIMEOUT)
    grant = actor.request("grant_request", {"actor_id": 0, "version": 0, "max_prompts": 5}, TIMEOUT)
    assert grant.type == "grant" and len(grant.body["prompts"]) == 2  # η = 0: one step's worth
    assert grant.body["min_version"] == 0
    p0, p1 = grant.body["prompts"]
    # A negative request would have handed admission slots back: refused, and the budget is untouched.
    ack = actor.request("grant_request", {"actor_id": 0, "version": 0, "max_prompts": -3}, TIMEOUT)
    assert (ack.type, ack.body["reason"]) == ("refused", "bad_value") and svc.budget.in_flight == 2
    # A zero-prompt request is the actor's heartbeat: `wait` (or `stop`), nothing granted.
    assert actor.request("grant_request", {"actor_id": 0, "version": 0, "max_prompts": 0}, TIMEOUT).type == "wait"

    actor.conn.sock.send(b"\x00garbage")  # not msgpack
    assert actor.conn.sock.poll(int(TIMEOUT * 1000))
    actor.conn.sock.recv()  # the buffer answers (rejected) and keeps running
    nan_group = group_for(p0, seq=0, logprob=float("nan")).to_wire()
    ack = actor.request("group", nan_group, TIMEOUT)
    assert (ack.type, ack.body["reason"]) == ("refused", "non_finite")
    assert actor.request("group", group_for(p0, seq=1).to_wire(), TIMEOUT).body["status"] == "accepted"
    assert actor.request("group", group_for(p0, seq=1).to_wire(), TIMEOUT).body["status"] == "duplicate"
    # Not enough for a batch yet: the learner is told to wait, never given a partial batch.
    assert learner.request("batch_request", {"version": 0, "n_groups": 2}, TIMEOUT).type == "wait"
    assert actor.request("grant_request", {"actor_id": 0, "version": 0, "max_prompts": 5}, TIMEOUT).type == "wait"
    assert actor.request("group", group_for(p1, seq=2).to_wire(), TIMEOUT).body["status"] == "accepted"
    batch = learner.request("batch_request", {"version": 0, "n_groups": 2}, TIMEOUT)
    assert batch.type == "batch" and batch.body["staleness"] == [0, 0]
    assert sorted(g["prompt_id"] for g in batch.body["groups"]) == sorted([p0["prompt_id"], p1["prompt_id"]])
    assert all(len(g["responses"]) == 2 for g in batch.body["groups"])  # groups kept whole
    assert svc.counts.rejected["not_msgpack"] == 1 and svc.counts.rejected["non_finite"] == 1 and svc.counts.duplicates == 1
    assert svc.counts.rejected["bad_value"] == 1


def test_stale_groups_are_dropped_not_trained(service):
    svc, actor, learner, _ = service
    learner.request("version", {"version": 0}, TIMEOUT)
    grant = actor.request("grant_request", {"actor_id": 0, "version": 0, "max_prompts": 2}, TIMEOUT)
    # Sent together (the outbox's way): every reply finds its request by id.
    groups = [group_for(prompt, seq=seq).to_wire() for seq, prompt in enumerate(grant.body["prompts"])]
    acks = actor.request_many("group", groups + [groups[0]], TIMEOUT)
    assert [a.body["status"] for a in acks] == ["accepted", "accepted", "duplicate"]
    assert [a.body["seq"] for a in acks] == [0, 1, 0]
    learner.request("version", {"version": 1}, TIMEOUT)  # the learner moved on: version-0 data is too old for η = 0
    assert learner.request("batch_request", {"version": 1, "n_groups": 2}, TIMEOUT).type == "wait"
    assert svc.counts.dropped_stale == 2
    # The dropped groups gave their admission slots back, and new grants demand version 1.
    grant = actor.request("grant_request", {"actor_id": 0, "version": 1, "max_prompts": 5}, TIMEOUT)
    # (η + v + 1) · B - accepted - in_flight = (0 + 1 + 1) · 2 - 0 - 0
    assert grant.type == "grant" and len(grant.body["prompts"]) == 4 and grant.body["min_version"] == 1


def test_a_held_grant_request_is_granted_the_moment_a_new_version_makes_room(service):
    from asyncor.wire.envelope import decode, encode

    svc, actor, learner, _ = service
    learner.request("version", {"version": 0}, TIMEOUT)
    grant = actor.request("grant_request", {"actor_id": 0, "version": 0, "max_prompts": 2}, TIMEOUT)
    for seq, prompt in enumerate(grant.body["prompts"]):
        actor.request("group", group_for(prompt, seq=seq).to_wire(), TIMEOUT)
    # η = 0 and the step's groups are in: nothing to grant until version 1. An idle actor asks to be held.
    actor.conn.sock.send(encode("grant_request", {"actor_id": 0, "version": 0, "max_prompts": 2, "hold_s": 2.0, "rid": 77}))
    time.sleep(0.3)
    assert not actor.conn.sock.poll(0)  # held, not answered `wait`
    assert learner.request("batch_request", {"version": 0, "n_groups": 2}, TIMEOUT).type == "batch"
    start = time.monotonic()
    learner.request("version", {"version": 1}, TIMEOUT)
    assert actor.conn.sock.poll(1000)
    reply = decode(actor.conn.sock.recv(), 1 << 24)
    assert reply.type == "grant" and reply.body["rid"] == 77 and reply.body["min_version"] == 1
    assert time.monotonic() - start < 0.5  # at the version, not at the end of the hold
    # With still nothing to grant a held request ends in `wait` when its hold does; bad holds are refused.
    held = actor.request("grant_request", {"actor_id": 0, "version": 1, "max_prompts": 2, "hold_s": 0.3}, TIMEOUT)
    assert held.type == "wait"
    for bad, reason in ((-1, "bad_value"), (60.0, "bad_value"), (float("nan"), "bad_value"), ("1", "bad_field"),
                        (True, "bad_field")):  # out of range, or not a number at all
        ack = actor.request("grant_request", {"actor_id": 0, "version": 1, "max_prompts": 1, "hold_s": bad}, TIMEOUT)
        assert (ack.type, ack.body["reason"]) == ("refused", reason), bad


def test_all_equal_groups_are_dropped_counted_and_replaced(service):
    """Rejection sampling, refill mode (the default): the batch stays full of groups with signal."""
    svc, actor, learner, _ = service
    learner.request("version", {"version": 0}, TIMEOUT)
    grant = actor.request("grant_request", {"actor_id": 0, "version": 0, "max_prompts": 2}, TIMEOUT)
    p0, p1 = grant.body["prompts"]
    assert actor.request("group", group_for(p0, seq=0, rewards=(1.0, 1.0)).to_wire(), TIMEOUT).body["status"] == "accepted"
    assert actor.request("group", group_for(p0, seq=0, rewards=(1.0, 1.0)).to_wire(), TIMEOUT).body["status"] == "duplicate"
    # Its admission slot came back (η = 0 allows only one step's worth of 2): one more prompt is granted.
    again = actor.request("grant_request", {"actor_id": 0, "version": 0, "max_prompts": 5}, TIMEOUT)
    assert again.type == "grant" and len(again.body["prompts"]) == 1
    (p2,) = again.body["prompts"]
    assert actor.request("group", group_for(p1, seq=1).to_wire(), TIMEOUT).body["status"] == "accepted"
    assert learner.request("batch_request", {"version": 0, "n_groups": 2}, TIMEOUT).type == "wait"
    assert actor.request("group", group_for(p2, seq=2, rewards=(1.0, 0.0)).to_wire(), TIMEOUT).body["status"] == "accepted"
    batch = learner.request("batch_request", {"version": 0, "n_groups": 2}, TIMEOUT)
    assert batch.type == "batch"
    assert sorted(g["prompt_id"] for g in batch.body["groups"]) == sorted([p1["prompt_id"], p2["prompt_id"]])
    report = batch.body["groups_report"]
    assert (report["arrived"], report["solve_all"], report["solve_none"]) == (3, 1, 0)
    assert report["accuracy_hist"][5] == 2 and report["accuracy_hist"][9] == 1  # accuracies 0.5, 0.5, 1.0
    assert svc.counts.rejected_uniform == {"solve_all": 1, "solve_none": 0}


def test_stage_switch_changes_grants_and_filters_mastered_prompts(tmp_path):
    svc, actor, learner, _, thread = start_service(
        tmp_path, task={"train_size": 40},
        learner={"prompts_per_step": 2, "steps": 10},
        algo={"stages": [{"start_step": 1, "max_response_tokens": 5, "group_size": 3}]})
    try:
        learner.request("version", {"version": 0}, TIMEOUT)
        grant = actor.request("grant_request", {"actor_id": 0, "version": 0, "max_prompts": 2}, TIMEOUT)
        assert grant.body["sampling"] == {"stage": 0, "n": 2, "max_tokens": 16}
        p0, p1 = grant.body["prompts"]
        # p0 solved by every sample, p1 by one of two: only p0 leaves the pool when stage 1 begins.
        actor.request("group", group_for(p0, seq=0, rewards=(1.0, 1.0)).to_wire(), TIMEOUT)
        actor.request("group", group_for(p1, seq=1, rewards=(1.0, 0.0)).to_wire(), TIMEOUT)
        pool = svc.prompts.remaining
        learner.request("version", {"version": 1}, TIMEOUT)
        assert svc.prompts.remaining == pool - 1 and svc.counts.online_filtered == 1
        grant = actor.request("grant_request", {"actor_id": 0, "version": 1, "max_prompts": 40}, TIMEOUT)
        assert grant.body["sampling"] == {"stage": 1, "n": 3, "max_tokens": 5}
        assert p0["prompt_id"] not in {p["prompt_id"] for p in grant.body["prompts"]}
        # Groups of the new stage's size are accepted.
        three = group_for(grant.body["prompts"][0], seq=2, rewards=(1.0, 0.0, 0.0)).to_wire()
        assert actor.request("group", three, TIMEOUT).body["status"] == "accepted"
    finally:
        stop_service(svc, thread, actor, learner)


def test_shrink_mode_trains_on_fewer_groups_and_skips_an_all_equal_batch(tmp_path):
    """Rejection sampling as the original code does it: the batch taken shrinks; nothing left = step skipped."""
    svc, actor, learner, _, thread = start_service(tmp_path, algo={"rejection": {"refill": False}})
    try:
        learner.request("version", {"version": 0}, TIMEOUT)
        p0, p1 = actor.request("grant_request", {"actor_id": 0, "version": 0, "max_prompts": 2}, TIMEOUT).body["prompts"]
        actor.request("group", group_for(p0, seq=0, rewards=(0.0, 0.0)).to_wire(), TIMEOUT)
        actor.request("group", group_for(p1, seq=1).to_wire(), TIMEOUT)
        batch = learner.request("batch_request", {"version": 0, "n_groups": 2}, TIMEOUT)
        assert batch.type == "batch" and [g["prompt_id"] for g in batch.body["groups"]] == [p1["prompt_id"]]
        assert batch.body["groups_report"]["solve_none"] == 1
        learner.request("version", {"version": 1}, TIMEOUT)
        p2, p3 = actor.request("grant_request", {"actor_id": 0, "version": 1, "max_prompts": 2}, TIMEOUT).body["prompts"]
        actor.request("group", group_for(p2, seq=2, version=1, rewards=(1.0, 1.0)).to_wire(), TIMEOUT)
        actor.request("group", group_for(p3, seq=3, version=1, rewards=(0.0, 0.0)).to_wire(), TIMEOUT)
        # Both all-equal: no batch for this step, and their admission slots come back for new prompts.
        assert learner.request("batch_request", {"version": 1, "n_groups": 2}, TIMEOUT).type == "wait"
        again = actor.request("grant_request", {"actor_id": 0, "version": 1, "max_prompts": 2}, TIMEOUT)
        assert again.type == "grant" and len(again.body["prompts"]) == 2
        assert svc.counts.rejected_uniform == {"solve_all": 1, "solve_none": 2} and svc.counts.dropped_stale == 0
    finally:
        stop_service(svc, thread, actor, learner)


def test_checkpoint_state_gives_untrained_groups_back_and_a_resumed_buffer_continues_from_it(tmp_path):
    """The `checkpoint` reply is what a resumed buffer starts from: the data cursor, the version, the
    budget and the ledger; groups stored or in flight at the checkpoint are granted again first."""
    svc, actor, learner, _, thread = start_service(tmp_path / "a", buffer={"max_staleness": 1})
    try:
        learner.request("version", {"version": 0}, TIMEOUT)
        grant = actor.request("grant_request", {"actor_id": 0, "version": 0, "max_prompts": 3}, TIMEOUT)
        p0, p1, p2 = grant.body["prompts"]  # η = 1: up to two steps' worth (4) may be granted
        for seq, p in enumerate((p0, p1)):
            assert actor.request("group", group_for(p, seq=seq).to_wire(), TIMEOUT).body["status"] == "accepted"
        assert learner.request("batch_request", {"version": 0, "n_groups": 2}, TIMEOUT).type == "batch"
        learner.request("version", {"version": 1}, TIMEOUT)
        assert actor.request("group", group_for(p2, seq=2).to_wire(), TIMEOUT).body["status"] == "accepted"
        p3 = actor.request("grant_request", {"actor_id": 0, "version": 1, "max_prompts": 1}, TIMEOUT).body["prompts"][0]
        reply = learner.request("checkpoint", {}, TIMEOUT)
        assert reply.type == "buffer_state"
        state = reply.body["state"]
        # Trained: p0, p1. Stored: p2. In flight: p3. Both untrained ones come back, stored first.
        assert state["version"] == 1 and state["budget_accepted"] == 2
        assert state["prompts"]["returned"] == [p2["prompt_id"], p3["prompt_id"]]
        assert state["requeued"] == 1 and state["accepted"] == 3 and state["trained_staleness_hist"] == [2]
        # A message the buffer does not accept from the actors' side.
        ack = actor.request("checkpoint", {"actor_id": 0}, TIMEOUT)
        assert (ack.type, ack.body["reason"]) == ("refused", "unknown_type")
    finally:
        stop_service(svc, thread, actor, learner)

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "buffer_state.json").write_text(json.dumps(state))
    svc2, actor2, learner2, _, thread2 = start_service(tmp_path / "b", buffer={"max_staleness": 1},
                                                       checkpoint={"resume_from": str(ckpt)})
    try:
        assert svc2.budget.version == 1 and svc2.budget.accepted == 2
        grant = actor2.request("grant_request", {"actor_id": 0, "version": 1, "max_prompts": 4}, TIMEOUT)
        ids = [p["prompt_id"] for p in grant.body["prompts"]]
        # (η + v + 1) · B - accepted = 3 · 2 - 2 = 4 grants; the two given back come first.
        assert len(ids) == 4 and ids[:2] == [p2["prompt_id"], p3["prompt_id"]]
        assert len(set(ids) | {p0["prompt_id"], p1["prompt_id"]}) == 6  # nothing trained comes back
        ledger = buffer_state.ledger(svc2.counts, len(svc2.store))
        assert ledger["accepted"] == 3 and ledger["trained"] == 2 and ledger["requeued_at_resume"] == 1
        assert ledger["unaccounted"] == 0
    finally:
        stop_service(svc2, thread2, actor2, learner2)


def test_a_broken_buffer_state_is_refused_naming_the_file(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "buffer_state.json").write_text('{"version": 1}')
    with pytest.raises(RuntimeError, match="buffer_state.json"):
        start_service(tmp_path / "b", checkpoint={"resume_from": str(ckpt)})


def test_a_restarted_actor_gets_its_predecessors_grants_back_in_the_stream_and_numbers_after_it(service):
    """Issue 14 items 3-4: an actor id saying hello again is a restarted actor. What its dead predecessor held
    goes back to the front of the prompt stream (admission slots freed), its new groups are numbered past
    every number the buffer has seen, and the ledger still adds up."""
    svc, actor, learner, _ = service
    learner.request("version", {"version": 0}, TIMEOUT)
    first = actor.request("actor_hello", {"actor_id": 0}, TIMEOUT).body
    assert (first["restarted"], first["seq_start"], first["version"]) == (False, 0, 0)
    grant = actor.request("grant_request", {"actor_id": 0, "version": 0, "max_prompts": 5}, TIMEOUT)
    p0, p1 = grant.body["prompts"]
    assert actor.request("group", group_for(p0, seq=3).to_wire(), TIMEOUT).body["status"] == "accepted"
    assert svc.budget.in_flight == 1 and list(svc.admission.granted) == [p1["prompt_id"]]
    # The actor dies holding p1; its successor (same identity, new connection) says hello. A restarted actor
    # connects seconds after the death (a new process, after actors.restart_backoff_s): by then the buffer has
    # dropped the dead connection. Without CURVE (no ROUTER_HANDOVER) a connection made while the old one is
    # still registered would not be read, so the successor waits as long as a restart does at the least.
    actor.close()
    time.sleep(1.0)
    net = svc.config.net
    successor = connect(ZmqTransport(), endpoint(net.host, net.buffer_actor_port), "actor0", 1 << 24, "buffer")
    try:
        again = successor.request("actor_hello", {"actor_id": 0}, TIMEOUT).body
        assert again["restarted"] is True and again["seq_start"] > 3
        assert svc.admission.granted == {} and svc.budget.in_flight == 0 and svc.admission.actor_restarts == {0: 1}
        regrant = successor.request("grant_request", {"actor_id": 0, "version": 0, "max_prompts": 5}, TIMEOUT)
        assert [p["prompt_id"] for p in regrant.body["prompts"]] == [p1["prompt_id"]]  # served first
        ack = successor.request("group", group_for(regrant.body["prompts"][0], seq=again["seq_start"]).to_wire(),
                                TIMEOUT).body
        assert ack["status"] == "accepted"
        batch = learner.request("batch_request", {"version": 0, "n_groups": 2}, TIMEOUT)
        assert batch.type == "batch" and len(batch.body["groups"]) == 2
        ledger = buffer_state.ledger(svc.counts, len(svc.store))
        assert ledger["accepted"] == 2 and ledger["trained"] == 2 and ledger["unaccounted"] == 0
        assert buffer_state.summary(svc)["actor_restarts"] == {"0": 1}
    finally:
        successor.close()
