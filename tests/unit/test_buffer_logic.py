"""The buffer's logic driven in-process, without a transport (buffer/service.py `on_actor`, `on_learner`,
`owed`): messages in, typed answers out. The same conversation over ZeroMQ is tests/integration/
test_buffer_service.py."""

import json

import numpy as np
import pytest

from asyncor.buffer.service import BufferService
from asyncor.configs.schema import Config
from asyncor.prepare.tiny_model import build_tokenizer
from asyncor.wire import messages as wire
from asyncor.wire.arrays import unpack_array
from asyncor.wire.envelope import Message, ProtocolError, decode, encode
from asyncor.wire.messages import encode_message
from asyncor.wire.trajectory import Response, TrajectoryGroup

ACTOR, GROUPS, LEARNER = b"actor0", b"actor0/groups", b"learner"


@pytest.fixture
def service(tmp_path):
    model = tmp_path / "tok"
    model.mkdir()
    build_tokenizer().save(str(model / "tokenizer.json"))
    (model / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>"}))
    (model / "config.json").write_text(json.dumps({"eos_token_id": 2}))
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
