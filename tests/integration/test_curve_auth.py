"""ZeroMQ CURVE (issue 14 item 7, wire/curve.py): with `net.auth = "curve"`, every ZeroMQ server of a run
(the buffer's two ports, the learner's weight announcements, the launcher's collector) serves only peers
holding one of the run's role keys. A peer without one cannot connect or inject. Its bytes never reach our
decoder, so nothing is counted and nothing changes. Peers with the keys are served as before. Each role gets
only its own secret key (issue 26 item 8; what a key may claim: test_identity_binding.py)."""

import dataclasses
import json

import socket
import time

import pytest

from asyncor.wire import curve
from asyncor.wire.envelope import encode
from asyncor.wire.rpc import connect
from asyncor.wire.transport import endpoint
from asyncor.wire.zeromq import ZmqTransport, generate_keys, keypair
from asyncor.launcher.auth import SERVERS, exposed_binds, resolve_auth, run_roles
from asyncor.launcher.ports import free_port
from asyncor.launcher.collector import Collector
from tests.integration.test_buffer_service import start_service

TIMEOUT = 5.0
ROLES = ["launcher", "buffer", "learner", "actor0", "actor1"]


def outsiders(keys):
    """Peers without a role's keys: plain TCP, a plain ZeroMQ socket, a CURVE client with its own key pair
    (it knows the server's public key, e.g. from keys/server.key, and even actor 0's routing tag), and one
    presenting actor 0's public key without its secret."""
    own_public, own_secret = keypair()
    actor0 = keys.issue("actor0")
    return {
        "plain": None,
        "own_pair": dataclasses.replace(actor0, client_public=own_public, client_secret=own_secret),
        "stolen_public": dataclasses.replace(actor0, client_secret=own_secret),
    }


def raw_tcp(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(data)
        s.settimeout(1.0)
        try:
            return s.recv(4096)
        except (TimeoutError, ConnectionResetError):
            return b""


@pytest.fixture
def keys(monkeypatch):
    """The run's keys; this process holds the buffer's (the buffer under test runs in a thread here)."""
    keys = generate_keys(ROLES, SERVERS)
    monkeypatch.setenv(curve.ENV, keys.issue("buffer").to_env()[curve.ENV])
    return keys


def test_the_buffer_serves_only_peers_with_the_keys(tmp_path, keys):
    svc, actor, learner, _, thread = start_service(tmp_path, net={"auth": "curve", "request_timeout_s": 2.0})
    transport = ZmqTransport()
    at = endpoint("127.0.0.1", svc.config.net.buffer_actor_port)
    try:
        # start_service's clients are plain: a buffer with CURVE does not answer them.
        with pytest.raises(TimeoutError):
            actor.request("actor_hello", {"actor_id": 0}, 1.0)
        for name, pair in outsiders(keys).items():
            intruder = connect(transport, at, "actor0", 1 << 20, "buffer", pair)
            try:
                for _ in range(2):  # the second finds the connection refused: its send keeps the deadline too
                    start = time.monotonic()
                    with pytest.raises(TimeoutError):
                        intruder.request("actor_hello", {"actor_id": 0}, 1.0)
                    assert time.monotonic() - start < 2.0, name
                intruder.conn.send(b"\xc1junk")  # queued nowhere when there is no connection
            finally:
                intruder.close()
        raw_tcp(svc.config.net.buffer_actor_port, b"\xff" + b"\x00" * 8 + b"\x7f" + b"junk" * 100)
        honest = connect(transport, at, "actor0", 1 << 20, "buffer", keys.issue("actor0"))
        try:
            reply = honest.request("actor_hello", {"actor_id": 0}, TIMEOUT)
            assert reply.type == "welcome" and reply.body["restarted"] is False
            grant = honest.request("grant_request", {"actor_id": 0, "version": 0, "max_prompts": 2}, TIMEOUT)
            assert grant.type == "grant"
        finally:
            honest.close()
        # Nothing any outsider sent reached the decoder: no rejection counted, no peer seen but the honest one.
        assert not any(svc.counts.rejected.values()) and svc.admission.actors_seen == {0}
    finally:
        svc.stop_requested = True
        thread.join(timeout=5)
        actor.close()
        learner.close()
    assert not thread.is_alive()  # the ZAP handler stopped with the buffer's context


def test_the_collector_writes_only_what_key_holders_send(tmp_path, keys):
    port = free_port()
    collector = Collector(str(tmp_path), "127.0.0.1", port, keys.issue("launcher")).start()
    transport = ZmqTransport()
    try:
        record = {"ts": 1.0, "role": "learner", "step": 1, "learner/loss": 0.5}
        for name, pair in outsiders(keys).items():
            conn = transport.connect(f"tcp://127.0.0.1:{port}", None, pair)
            conn.send(encode("metrics", {"record": record}))
            conn.send(encode("summary", {"role": "learner", "summary": {"steps": 99}, "rid": 1}))
            assert not conn.readable(1.0)  # no acknowledgement: the handshake never completed
            conn.close()
        # An honest role (its keys from the environment, as launch.py starts it) gets through.
        from asyncor.telemetry.link import LauncherLink

        link = LauncherLink(f"tcp://127.0.0.1:{port}")
        assert link.summary("learner", {"steps": 3}, TIMEOUT)
        assert collector.result("learner") == {"steps": 3} and collector.records == 0
        assert not collector.refused
    finally:
        collector.stop()


def test_the_learner_announcement_port_ignores_hellos_without_the_keys(keys):
    transport = ZmqTransport()
    port = free_port()
    server = transport.listen(f"tcp://127.0.0.1:{port}", keys.issue("learner"))  # as WeightBroadcaster does
    try:
        for name, pair in outsiders(keys).items():
            conn = transport.connect(f"tcp://127.0.0.1:{port}", "actor0/weights", pair)
            conn.send(encode("receiver_hello", {"actor_id": 0}))
            assert not server.readable(0.5), name
            conn.close()
        honest = transport.connect(f"tcp://127.0.0.1:{port}", None, keys.issue("actor0"))
        honest.send(b"hello")
        assert server.readable(TIMEOUT)
        peer, raw = server.recv()
        assert raw == b"hello" and peer.startswith(b"actor0/")  # an identity made up for it is still actor 0's
        honest.close()
    finally:
        server.close()


def test_auth_is_on_for_exposed_runs_and_off_on_loopback(tmp_path, capsys):
    from asyncor.configs.schema import Config

    local = Config.model_validate({})
    assert exposed_binds(local) == [] and resolve_auth(local, str(tmp_path)) is None and local.net.auth == "off"
    exposed = Config.model_validate({"net": {"bind_host": "0.0.0.0"}})
    keys = resolve_auth(exposed, str(tmp_path))
    assert exposed.net.auth == "curve" and isinstance(keys, curve.RunKeys)
    assert set(keys.roles) == set(run_roles(exposed)) >= {"buffer", "learner", "actor0", "eval_before", "launcher"}
    assert (tmp_path / "keys" / "server.key_secret").stat().st_mode & 0o077 == 0  # secrets: owner only
    written = {p.name for p in (tmp_path / "keys").iterdir()}
    assert {n for n in written if n.endswith("_secret")} == {"server.key_secret"} and "actor0.key" in written
    # A server pair given by the user is read from its certificate file; the roles' pairs are always new.
    given = Config.model_validate({"net": {"auth": "curve", "curve_keys": str(tmp_path / "keys")}})
    again = resolve_auth(given, str(tmp_path / "other"))
    assert (again.server_public, again.server_secret) == (keys.server_public, keys.server_secret)
    assert again.roles["actor0"] != keys.roles["actor0"]
    # "off" on an exposed address is the explicit opt-out: allowed, and warned.
    opted_out = Config.model_validate({"net": {"bind_host": "0.0.0.0", "auth": "off"}})
    assert resolve_auth(opted_out, str(tmp_path)) is None and "net.auth = off" in capsys.readouterr().err
    broken = Config.model_validate({"net": {"auth": "curve", "curve_keys": str(tmp_path / "nowhere")}})
    with pytest.raises(ValueError, match="net.curve_keys: cannot read .*server.key_secret"):
        resolve_auth(broken, str(tmp_path))


def test_a_role_told_to_use_curve_without_keys_says_so(monkeypatch):
    monkeypatch.delenv(curve.ENV, raising=False)
    with pytest.raises(RuntimeError, match='net.auth = "curve" but ASYNCOR_CURVE_KEYS'):
        curve.role_keys("curve")
    monkeypatch.setenv(curve.ENV, "server,secret,client,secret")  # the format before per-role keys
    with pytest.raises(RuntimeError, match="does not hold this role's keys"):
        curve.role_keys("curve")
    assert curve.role_keys("off") is None


def test_each_role_holds_only_its_own_secret_and_only_servers_the_server_secret(tmp_path):
    from asyncor.configs.schema import Config

    config = Config.model_validate({"net": {"auth": "curve"}, "actors": {"count": 2}, "learner": {"ranks": 2}})
    keys = resolve_auth(config, str(tmp_path))
    for role in run_roles(config):
        text = keys.issue(role).to_env()[curve.ENV]
        held = curve.from_env({curve.ENV: text})
        assert (held.role, held.client_public, held.client_secret) == (role, *keys.roles[role])
        others = [secret for other, (_, secret) in keys.roles.items() if other != role]
        assert not [s for s in others if s.decode() in text], role  # no other role's secret
        serves = role in ("buffer", "learner", "launcher")  # they listen (learner: rank 0's announcements)
        assert (keys.server_secret.decode() in text) == serves, role
        assert (set(held.peers) == set(keys.roles)) if serves else not held.peers, role
        assert json.loads(text)["public"] == keys.roles[role][0].decode()
    with pytest.raises(ValueError, match="no CURVE keys were made for role 'actor2'"):
        keys.issue("actor2")
