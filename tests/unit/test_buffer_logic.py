"""The buffer's logic driven in-process, without a transport (buffer/service.py `on_actor`, `on_learner`,
`owed`): messages in, typed answers out. The same conversation over ZeroMQ is tests/integration/
test_buffer_service.py."""

import json

import msgpack
import numpy as np
import pytest
from asyncor.buffer.service import BufferService
from asyncor.configs.schema import Config
from asyncor.wire import messages as wire
from asyncor.wire.arrays import unpack_array
from asyncor.wire.envelope import Message, ProtocolError, decode, encode
from asyncor.wire.messages import encode_message
from asyncor.wire.trajectory import Response, TrajectoryGroup
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.wire_fuzz import envelope, paths, replaced
from tests.conftest import write_tokenizer_dir

ACTOR, GROUPS, LEARNER = b"actor0", b"actor0/groups", b"learner"


@pytest.fixture
def service(tmp_path):
    model = write_tokenizer_dir(tmp_path / "tok")
    config = Config.model_validate({"run": {"output_dir": str(tmp_path), "name": "logic"}, "model": {"path": str(model)},
                                    "actors": {"group_size": 2}, "buffer": {"max_staleness": 0},
                                    "learner": {"prompts_per_step": 2}})
    return BufferService(config)


def msg(message: wire.Body) -> Message:
    """A message as the buffer receives it: through the envelope, with a request id."""
    return decode(encode(message.TYPE, {**wire.body(message), "rid": 1}), 1 << 20)


def group(prompt: wire.GrantedPrompt, seq: int, rewards=(0.0, 1.0)) -> Message:
    ids = unpack_array(prompt.token_ids, "token_ids", "<i4")
    responses = [Response(np.array([5, 2], np.int32), np.array([-0.5, -0.1], np.float32), 0, "stop", r) for r in rewards]
    g = TrajectoryGroup(prompt.prompt_id, ids, responses, actor_id=0, seq=seq, gen_time_s=0.1)
    return decode(encode(wire.TRAJECTORY_GROUP, g.to_wire()), 1 << 20)


def test_a_grant_its_groups_and_a_batch_without_sockets(service):
    assert isinstance(service.on_actor(ACTOR, msg(wire.ActorHello(actor_id=0))), wire.Welcome)
    assert isinstance(service.on_learner(LEARNER, msg(wire.VersionUpdate(version=0))), wire.Ack)
    grant = service.on_actor(ACTOR, msg(wire.GrantRequest(actor_id=0, max_prompts=5)))
    assert isinstance(grant, wire.GrantReply) and len(grant.prompts) == 2  # η = 0: one step's worth
    assert service.on_learner(LEARNER, msg(wire.BatchRequest(version=0, n_groups=2))) is None  # long-polled
    assert service.owed() == ([], [])  # nothing to train on yet
    acks = [service.on_actor(GROUPS, group(p, seq)) for seq, p in enumerate(grant.prompts)]
    assert [a.status for a in acks] == ["accepted", "accepted"]
    assert service.on_actor(GROUPS, group(grant.prompts[0], 0)).status == "duplicate"
    to_actors, to_learner = service.owed()
    (peer, _, batch), = to_learner
    assert peer == LEARNER and isinstance(batch, wire.BatchReply) and batch.staleness == [0, 0]
    assert to_actors == [] and service.counts.accepted == 2 and service.counts.duplicates == 1


def test_refusals_are_protocol_errors_and_leave_the_state_as_it_was(service):
    service.on_actor(ACTOR, msg(wire.ActorHello(actor_id=0)))
    with pytest.raises(ProtocolError) as err:  # actor 0's socket speaking for actor 1
        service.on_actor(ACTOR, msg(wire.GrantRequest(actor_id=1, max_prompts=1)))
    assert err.value.reason == "bad_value"
    with pytest.raises(ProtocolError) as err:  # a learner message from an actor's socket
        service.on_learner(ACTOR, msg(wire.Done()))
    assert err.value.reason == "bad_value" and service.done_at is None
    with pytest.raises(ProtocolError) as err:
        service.on_actor(ACTOR, decode(encode_message(wire.Probe(epoch=1)), 1 << 20))
    assert err.value.reason == "unknown_type"
    assert isinstance(service.refuse(err.value), wire.Refused) and service.counts.rejected["unknown_type"] == 1
    assert service.budget.in_flight == 0 and service.admission.granted == {}


def test_a_held_request_is_answered_when_room_appears(service):
    service.on_actor(ACTOR, msg(wire.ActorHello(actor_id=0)))
    first = service.on_actor(ACTOR, msg(wire.GrantRequest(actor_id=0, max_prompts=2)))
    assert service.on_actor(ACTOR, msg(wire.GrantRequest(actor_id=0, max_prompts=2, hold_s=2.0))) is None  # held
    assert service.owed() == ([], [])
    for seq, p in enumerate(first.prompts):
        service.on_actor(GROUPS, group(p, seq))
    service.on_learner(LEARNER, msg(wire.BatchRequest(version=0, n_groups=2)))
    service.owed()  # the batch goes out
    service.on_learner(LEARNER, msg(wire.VersionUpdate(version=1)))  # the next step's room
    (peer, _, answer), = service.owed()[0]
    assert peer == ACTOR and isinstance(answer, wire.GrantReply) and answer.min_version == 1


def test_a_grant_return_naming_a_prompt_twice_frees_its_slot_once(service):
    """Issue 26 item 2: a return that names one prompt twice (an honest actor can send one after a resume), or
    prompts that are not its own, frees each of its own grants once, is acknowledged, and counts the rest."""
    service.on_actor(ACTOR, msg(wire.ActorHello(actor_id=0)))
    service.on_actor(b"actor1", msg(wire.ActorHello(actor_id=1)))
    mine = service.on_actor(ACTOR, msg(wire.GrantRequest(actor_id=0, max_prompts=1))).prompts[0].prompt_id
    theirs = service.on_actor(b"actor1", msg(wire.GrantRequest(actor_id=1, max_prompts=1))).prompts[0].prompt_id
    assert service.budget.in_flight == 2
    answer = service.on_actor(ACTOR, msg(wire.GrantReturn(actor_id=0, prompt_ids=[mine, mine])))
    assert isinstance(answer, wire.Ack)
    assert set(service.admission.granted) == {theirs} and service.budget.in_flight == 1  # one slot freed, once
    assert service.admission.returns_ignored == 1
    # Returned already, another actor's, never granted: acknowledged, nothing freed, counted.
    again = service.on_actor(ACTOR, msg(wire.GrantReturn(actor_id=0, prompt_ids=[mine, theirs, 10**9])))
    assert isinstance(again, wire.Ack) and service.budget.in_flight == 1 and service.admission.returns_ignored == 4
    assert set(service.admission.granted) == {theirs}
    regrant = service.on_actor(ACTOR, msg(wire.GrantRequest(actor_id=0, max_prompts=1)))
    assert [p.prompt_id for p in regrant.prompts] == [mine]  # served again first, to one actor only


FUZZED = settings(max_examples=400, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                         HealthCheck.data_too_large])


def test_the_buffer_loop_answers_any_message_and_keeps_its_books(service):
    """The buffer's loop (`receive`: decode, then on_actor / on_learner) on honest messages of every type with one
    field, at any depth, replaced by any msgpack value (tests/unit/test_wire_fuzz.py `values`), from the actor's
    and the learner's sockets: every one is answered or refused (counted), nothing raises, and the admission
    books stay balanced (a slot in flight per prompt granted)."""
    from tests.unit.test_wire_fuzz import values

    service.on_actor(ACTOR, msg(wire.ActorHello(actor_id=0)))
    service.on_learner(LEARNER, msg(wire.VersionUpdate(version=0)))
    grant = service.on_actor(ACTOR, msg(wire.GrantRequest(actor_id=0, max_prompts=2)))
    honest = {
        wire.TRAJECTORY_GROUP: group(grant.prompts[0], seq=0).body,
        **{kind.TYPE: wire.body(example) for kind, example in {
            wire.ActorHello: wire.ActorHello(actor_id=0),
            wire.GrantRequest: wire.GrantRequest(actor_id=0, max_prompts=1),
            wire.GrantReturn: wire.GrantReturn(actor_id=0, prompt_ids=[grant.prompts[1].prompt_id]),
            wire.Bye: wire.Bye(actor_id=0, stats={"tokens": 3}), wire.VersionUpdate: wire.VersionUpdate(version=0),
            wire.BatchRequest: wire.BatchRequest(version=0, n_groups=2)}.items()}}
    refused_before = sum(service.counts.rejected.values())
    outcomes = {"answered": 0, "refused": 0}

    @FUZZED
    @given(st.sampled_from(sorted(honest)), st.sampled_from([ACTOR, GROUPS, LEARNER]), st.data())
    def one(type_, peer, data):
        body = honest[type_]
        path = data.draw(st.sampled_from(paths(body)))
        raw = envelope(type_, replaced(body, path, data.draw(values)))
        handle = service.on_learner if peer == LEARNER else service.on_actor
        _, answer = service.receive(handle, peer, raw)
        outcomes["refused" if isinstance(answer, wire.Refused) else "answered"] += 1
        assert service.budget.in_flight == len(service.admission.granted) >= 0

    one()
    assert sum(service.counts.rejected.values()) - refused_before == outcomes["refused"] > 0
    # Still serving: a new actor is welcomed and granted what the budget has room for.
    service.on_actor(b"actor1", msg(wire.ActorHello(actor_id=1)))
    service.on_actor(b"actor1", msg(wire.GrantRequest(actor_id=1, max_prompts=1)))
    assert service.budget.in_flight == len(service.admission.granted)


def test_what_the_buffer_keeps_from_a_message_stays_encodable(service):
    """Values a peer sends that the buffer keeps and later sends or writes: an actor's goodbye figures (in
    roles/buffer.json: JSON values only) and a group's sequence number (a restarted actor's Welcome numbers
    past it: it must still fit msgpack's 64 bits)."""
    from asyncor.buffer import state

    service.on_actor(ACTOR, msg(wire.ActorHello(actor_id=0)))
    service.on_learner(LEARNER, msg(wire.VersionUpdate(version=0)))
    for stats in ({"blob": b"\x00"}, {"when": msgpack.Timestamp(1, 0)}, {"deep": [[[[[[[1]]]]]]]}):
        with pytest.raises(ProtocolError) as err:
            service.on_actor(ACTOR, decode(encode("bye", {"actor_id": 0, "stats": stats, "rid": 1}), 1 << 20))
        assert err.value.reason in ("bad_field", "bad_value")
    assert isinstance(service.on_actor(ACTOR, msg(wire.Bye(actor_id=0, stats={"tokens": 3, "mean": 0.5}))), wire.Ack)
    json.dumps(state.summary(service))
    grant = service.on_actor(ACTOR, msg(wire.GrantRequest(actor_id=0, max_prompts=1)))
    with pytest.raises(ProtocolError) as err:
        service.on_actor(GROUPS, group(grant.prompts[0], seq=2**64 - 1))
    assert err.value.reason == "bad_value"
    welcome = service.on_actor(ACTOR, msg(wire.ActorHello(actor_id=0)))  # a restart
    assert welcome.restarted and decode(encode_message(welcome), 1 << 20).type == "welcome"
