"""Identity bound to a key (issue 26 item 8, wire/zeromq.py): with CURVE every role has a key pair of its own,
and a listener hands on a message under the identity `actor0` or `actor0/<channel>` only when it came from
actor 0's key. Another role's key (a valid key of the run) cannot speak as actor 0: its messages are dropped
before the buffer's decoder and counted (`impostor`), and actor 0, connected all along, keeps working.
Actor 0's own key still takes its name over at once (a restarted actor: ZeroMQ's ROUTER handover)."""

import dataclasses
import time

import pytest

from asyncor.wire import curve
from asyncor.wire.rpc import connect
from asyncor.wire.transport import Delivery, endpoint
from asyncor.wire.zeromq import ZmqTransport, generate_keys
from asyncor.launcher.auth import SERVERS
from asyncor.launcher.ports import free_port
from tests.integration.test_buffer_service import start_service

TIMEOUT = 5.0
ROLES = ["launcher", "buffer", "learner", "actor0", "actor1"]


@pytest.fixture
def keys(monkeypatch):
    """The run's keys; this process holds the buffer's (the buffer under test runs in a thread here)."""
    keys = generate_keys(ROLES, SERVERS)
    monkeypatch.setenv(curve.ENV, keys.issue("buffer").to_env()[curve.ENV])
    return keys


def posing_as(keys, role: str, pretended: str, known_tag: bool = False) -> curve.CurveKeys:
    """`role`'s real keys, used to claim `pretended`'s identities; `known_tag`: the impostor even learned the
    routing tag of `pretended` (not its secret key)."""
    own = keys.issue(role)
    return dataclasses.replace(own, role=pretended, tag=keys.issue(pretended).tag if known_tag else own.tag)


@pytest.fixture
def buffer(tmp_path, keys):
    svc, plain_actor, plain_learner, _, thread = start_service(tmp_path, net={"auth": "curve", "request_timeout_s": 2})
    plain_actor.close()
    plain_learner.close()
    yield svc, endpoint("127.0.0.1", svc.config.net.buffer_actor_port)
    svc.stop_requested = True
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_another_roles_key_cannot_speak_as_actor0_and_actor0_keeps_working(buffer, keys):
    svc, at = buffer
    transport = ZmqTransport()
    actor0 = connect(transport, at, "actor0", 1 << 20, "buffer", keys.issue("actor0"))
    stranger = connect(transport, at, "actor0", 1 << 20, "buffer", posing_as(keys, "actor1", "actor0"))
    stranger_groups = connect(transport, at, "actor0/groups", 1 << 20, "buffer", posing_as(keys, "actor1", "actor0"))
    try:
        assert actor0.request("actor_hello", {"actor_id": 0}, TIMEOUT).type == "welcome"
        grant = actor0.request("grant_request", {"actor_id": 0, "version": 0, "max_prompts": 2}, TIMEOUT)
        granted = [p["prompt_id"] for p in grant.body["prompts"]]
        assert grant.type == "grant" and granted
        # The stranger holds a real key of the run (actor 1's) and says bye, returns the grants, asks for more
        # and sends a group, all as actor 0: nothing is answered, nothing reaches the buffer's logic.
        for client, type_, body in ((stranger, "bye", {"actor_id": 0, "stats": {}}),
                                    (stranger, "grant_return", {"actor_id": 0, "prompt_ids": granted}),
                                    (stranger, "grant_request", {"actor_id": 0, "version": 0, "max_prompts": 2}),
                                    (stranger_groups, "group", {"actor_id": 0, "seq": 0})):
            with pytest.raises(TimeoutError):
                client.request(type_, body, 0.5)
        assert svc.counts.rejected.get("impostor") == 4
        assert 0 not in svc.admission.actors_done and sorted(svc.admission.held_by(0)) == sorted(granted)
        # Actor 0, connected all along, keeps working: its connection was not taken over.
        assert actor0.request("grant_return", {"actor_id": 0, "prompt_ids": granted}, TIMEOUT).type == "ack"
        assert svc.admission.held_by(0) == []
        assert actor0.request("bye", {"actor_id": 0, "stats": {}}, TIMEOUT).type == "ack"
        # The stranger's key is a valid one: as itself (actor 1) it is served.
        as_itself = connect(transport, at, "actor1", 1 << 20, "buffer", keys.issue("actor1"))
        assert as_itself.request("actor_hello", {"actor_id": 1}, TIMEOUT).type == "welcome"
        as_itself.close()
        assert svc.counts.rejected.get("impostor") == 4 and svc.admission.actors_done == {0}
    finally:
        for client in (actor0, stranger, stranger_groups):
            client.close()


def test_a_restarted_actor_takes_over_its_own_name_at_once(buffer, keys):
    svc, at = buffer
    transport = ZmqTransport()
    first = connect(transport, at, "actor0", 1 << 20, "buffer", keys.issue("actor0"))
    second = None
    try:
        assert first.request("actor_hello", {"actor_id": 0}, TIMEOUT).type == "welcome"
        # The old connection is still open (its process hung, or has not been reaped): the new one, with the same
        # key, is served at once.
        second = connect(transport, at, "actor0", 1 << 20, "buffer", keys.issue("actor0"))
        start = time.monotonic()
        welcome = second.request("actor_hello", {"actor_id": 0}, TIMEOUT)
        assert welcome.type == "welcome" and welcome.body["restarted"] is True
        assert time.monotonic() - start < 2.0 and not svc.counts.rejected.get("impostor")
    finally:
        first.close()
        if second is not None:
            second.close()


def test_the_weight_listener_hears_an_actor_only_from_its_own_key(keys):
    """What WeightBroadcaster reads: a hello from `actor0/weights` is actor 0's, whoever else holds a key."""
    transport = ZmqTransport()
    port = free_port()
    listener = transport.listen(f"tcp://127.0.0.1:{port}", keys.issue("learner"))
    address = f"tcp://127.0.0.1:{port}"
    conns = []
    try:
        # Actor 1's key claiming actor 0's weight receiver: with its own tag, and with actor 0's (the tag alone is
        # not enough: the User-Id of the key is checked too).
        for known_tag in (False, True):
            conns.append(transport.connect(address, "actor0/weights", posing_as(keys, "actor1", "actor0", known_tag)))
            assert conns[-1].send(b"receiver_hello from actor 0")
            assert not listener.readable(0.5)
        assert listener.impostors == 2
        # A role's own identity goes through, the tag removed: the name the broadcaster compares with.
        conns.append(transport.connect(address, "actor1/weights", keys.issue("actor1")))
        assert conns[-1].send(b"hello from actor 1")
        assert listener.readable(TIMEOUT) and listener.recv() == (b"actor1/weights", b"hello from actor 1")
        assert listener.send(b"actor1/weights", b"join") is Delivery.SENT
        assert conns[-1].readable(TIMEOUT) and conns[-1].recv() == b"join"
        assert listener.impostors == 2
    finally:
        for conn in conns:
            conn.close()
        listener.close()


def test_a_connection_cannot_be_made_under_another_roles_name(keys):
    with pytest.raises(ValueError, match="identity 'actor0' is not one of role 'actor1'"):
        ZmqTransport().connect("tcp://127.0.0.1:1", "actor0", keys.issue("actor1"))
    with pytest.raises(ValueError, match="role 'actor0' holds no server secret key"):
        ZmqTransport().listen("tcp://127.0.0.1:1", keys.issue("actor0"))
