"""Defects found by reading the buffer (issue 14, item 10), each shown over real sockets."""

import pytest

from asyncor.buffer import state as buffer_state
from tests.integration.test_buffer_service import TIMEOUT, group_for, start_service


@pytest.fixture
def small_pool(tmp_path):
    # 10 training prompts, 6 per step, η = 1: admission lets 12 exist at once, more than the pool.
    svc, actor, learner, result, thread = start_service(
        tmp_path, task={"train_size": 10}, learner={"prompts_per_step": 6}, buffer={"max_staleness": 1})
    yield svc, actor, learner
    svc.stop_requested = True
    thread.join(timeout=5)
    actor.close()
    learner.close()


def test_a_prompt_still_in_flight_is_never_granted_twice_and_no_slot_leaks(small_pool):
    svc, actor, learner = small_pool
    learner.request("version", {"version": 0}, TIMEOUT)
    grant = actor.request("grant_request", {"actor_id": 0, "max_prompts": 12}, TIMEOUT)
    ids = [p["prompt_id"] for p in grant.body["prompts"]]
    assert len(ids) == len(set(ids)) == 10  # the whole pool once; the 2 slots left over went back
    assert svc.budget.in_flight == 10
    for seq, prompt in enumerate(grant.body["prompts"]):
        assert actor.request("group", group_for(prompt, seq=seq).to_wire(), TIMEOUT).body["status"] == "accepted"
    assert svc.budget.in_flight == 0  # every slot came back with its group: nothing leaked
    # With the whole pool stored and the window full, nothing is granted, and nothing is granted twice.
    assert actor.request("grant_request", {"actor_id": 0, "max_prompts": 12}, TIMEOUT).type in ("wait", "grant")
    for _ in range(2):  # the learner consumes two steps: room for new grants, from a fresh epoch
        assert learner.request("batch_request", {"version": 0, "n_groups": 5}, TIMEOUT).type == "batch"
    learner.request("version", {"version": 1}, TIMEOUT)
    more = actor.request("grant_request", {"actor_id": 0, "max_prompts": 12}, TIMEOUT)
    again = [p["prompt_id"] for p in more.body["prompts"]]
    assert more.type == "grant" and len(again) == len(set(again))


def test_a_batch_request_missing_a_field_is_refused_with_its_id_and_the_buffer_keeps_serving(small_pool):
    svc, actor, learner = small_pool
    reply = learner.request("batch_request", {"version": 0}, TIMEOUT)  # no n_groups: answered, by request id
    assert (reply.type, reply.body["reason"]) == ("refused", "bad_field")
    reply = learner.request("batch_request", {"version": 0, "n_groups": -1}, TIMEOUT)
    assert (reply.type, reply.body["reason"]) == ("refused", "bad_value")
    assert learner.request("learner_hello", {}, TIMEOUT).body["status"] == "ok"  # still serving
    assert actor.request("actor_hello", {"actor_id": 0}, TIMEOUT).body["status"] == "ok"
    assert svc.counts.rejected["bad_field"] == 1 and svc.counts.rejected["bad_value"] == 1


def test_groups_must_answer_a_grant_their_sender_holds_and_peers_act_only_for_themselves(tmp_path):
    """Issue 14 item 1: data a peer was never granted, or that the model cannot embed, never reaches the
    learner; one peer cannot return, answer or end another's work; a refused answer frees its grant."""
    import dataclasses

    import numpy as np

    from asyncor.wire.trajectory import Response
    from asyncor.wire.rpc import connect
    from asyncor.wire.transport import endpoint
    from asyncor.wire.zeromq import ZmqTransport

    svc, actor0, learner, result, thread = start_service(tmp_path, actors={"group_size": 2,
                                                                            "max_response_tokens": 4})
    net = svc.config.net
    actor1 = connect(ZmqTransport(), endpoint(net.host, net.buffer_actor_port), "actor1", 1 << 24, "buffer")
    try:
        learner.request("version", {"version": 0}, TIMEOUT)
        p0, p1 = actor0.request("grant_request", {"actor_id": 0, "max_prompts": 2}, TIMEOUT).body["prompts"]
        honest = group_for(p0, seq=0)
        forged = {
            "claims another actor": dataclasses.replace(honest, actor_id=1),
            "wrong prompt tokens": dataclasses.replace(honest, prompt_ids=honest.prompt_ids[::-1].copy()),
            "wrong group size": dataclasses.replace(honest, responses=honest.responses[:1]),
            "too long": dataclasses.replace(honest, responses=[
                Response(np.arange(3, 9, dtype=np.int32), np.full(6, -0.1, np.float32), 0, "length", 0.0)] * 2),
            "outside the vocabulary": dataclasses.replace(honest, responses=[
                Response(np.array([5, 10**6], np.int32), np.array([-0.1, -0.1], np.float32), 0, "stop", 1.0)] * 2),
        }
        # Actor 1 holds no grant: it can neither answer actor 0's prompt nor hand it back or say bye for actor 0.
        ack = actor1.request("group", dataclasses.replace(honest, actor_id=1).to_wire(), TIMEOUT)
        assert ack.type == "refused"
        # (A return naming another actor's prompt frees nothing: acknowledged, the id counted as ignored.)
        assert actor1.request("grant_return", {"actor_id": 1, "prompt_ids": [p0["prompt_id"]]}, TIMEOUT
                              ).type == "ack" and svc.admission.returns_ignored == 1
        assert actor1.request("bye", {"actor_id": 0}, TIMEOUT).type == "refused"
        assert actor0.request("group", forged["claims another actor"].to_wire(), TIMEOUT).type == "refused"
        assert svc.admission.actors_done == set() and set(svc.admission.granted) == {p0["prompt_id"], p1["prompt_id"]}
        in_flight = svc.budget.in_flight
        for what, group in forged.items():
            ack = actor0.request("group", group.to_wire(), TIMEOUT)
            assert (ack.type, ack.body["reason"]) == ("refused", "bad_value"), what
        # The holder's refused answer gave its grant back: the slot is free and the prompt is served again first.
        assert set(svc.admission.granted) == {p1["prompt_id"]} and svc.budget.in_flight == in_flight - 1
        again = actor0.request("grant_request", {"actor_id": 0, "max_prompts": 1}, TIMEOUT).body["prompts"]
        assert [p["prompt_id"] for p in again] == [p0["prompt_id"]]
        # The honest answers go through.
        assert actor0.request("group", group_for(again[0], seq=0).to_wire(), TIMEOUT).body["status"] == "accepted"
        assert actor0.request("group", group_for(p1, seq=1).to_wire(), TIMEOUT).body["status"] == "accepted"
        assert svc.counts.rejected["bad_value"] == len(forged) + 3
    finally:
        svc.stop_requested = True
        thread.join(timeout=5)
        for c in (actor0, actor1, learner):
            c.close()


def test_the_ledger_accounts_for_every_accepted_group_once(tmp_path):
    """Issue 14 item 4: trained once, dropped stale, dropped as all-equal, or still buffered; retries are
    discarded as duplicates and never counted."""
    svc, actor, learner, result, thread = start_service(tmp_path)  # η = 0, 2 prompts per step, groups of 2
    try:
        learner.request("version", {"version": 0}, TIMEOUT)
        p = actor.request("grant_request", {"actor_id": 0, "max_prompts": 2}, TIMEOUT).body["prompts"]
        for seq, prompt in enumerate(p):
            assert actor.request("group", group_for(prompt, seq=seq).to_wire(), TIMEOUT).body["status"] == "accepted"
        learner.request("version", {"version": 1}, TIMEOUT)  # both are now stale for η = 0
        assert learner.request("batch_request", {"version": 1, "n_groups": 2}, TIMEOUT).type == "wait"
        p = actor.request("grant_request", {"actor_id": 0, "max_prompts": 4}, TIMEOUT).body["prompts"]
        bodies = [group_for(p[0], seq=2, version=1, rewards=(1.0, 1.0)).to_wire()]  # all right: dropped
        bodies += [group_for(q, seq=3 + i, version=1).to_wire() for i, q in enumerate(p[1:])]
        for body in bodies + bodies[1:2]:  # one retry
            actor.request("group", body, TIMEOUT)
        assert learner.request("batch_request", {"version": 1, "n_groups": 2}, TIMEOUT).type == "batch"
        assert buffer_state.ledger(svc.counts, len(svc.store)) == {"accepted": 6, "trained": 2, "dropped_stale": 2, "dropped_uniform": 1,
                                "still_buffered": 1, "requeued_at_resume": 0, "unaccounted": 0,
                                "duplicates_discarded": 1}
    finally:
        svc.stop_requested = True
        thread.join(timeout=5)
        actor.close()
        learner.close()
