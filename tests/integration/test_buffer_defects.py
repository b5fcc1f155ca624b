"""Defects found by reading the buffer (issue 14, item 10), each shown over real sockets."""

import pytest

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
    assert (reply.body["status"], reply.body["reason"]) == ("rejected", "bad_field")
    reply = learner.request("batch_request", {"version": 0, "n_groups": -1}, TIMEOUT)
    assert (reply.body["status"], reply.body["reason"]) == ("rejected", "bad_value")
    assert learner.request("hello", {}, TIMEOUT).body["status"] == "ok"  # still serving
    assert actor.request("hello", {"actor_id": 0}, TIMEOUT).body["status"] == "ok"
    assert svc.rejected["bad_field"] == 1 and svc.rejected["bad_value"] == 1
