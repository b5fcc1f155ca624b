"""A one-host run without CURVE listens on loopback only (issue 26 item 7): `net.auth = "auto"` leaves CURVE
off only when every server binds a loopback address, and then the torch.distributed stores (the broadcast
group's, `net.store_port`, and the learner ranks' own, `net.learner_port`) must not listen on every interface
as torch's own server does: none of the run's ports is reachable at this host's other addresses
(docs/security.md)."""

import socket
import subprocess

import pytest

from asyncor.configs.schema import Config
from asyncor.launcher.auth import resolve_auth
from asyncor.launcher.ports import assign_ports
from asyncor.sync.group import is_loopback, open_store
from tests.integration.test_buffer_service import start_service, stop_service


def this_hosts_other_address() -> str | None:
    """An IPv4 address of one of this host's own non-loopback interfaces (one we can bind), or None."""
    candidates = []
    try:
        candidates += subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        pass
    for address in candidates:
        if ":" in address or is_loopback(address):
            continue
        with socket.socket() as s:
            try:
                s.bind((address, 0))  # it is this host's own: connecting to it never leaves the machine
                return address
            except OSError:
                continue
    return None


def reachable(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def other_address():
    address = this_hosts_other_address()
    if address is None:
        pytest.skip("this host has no address but loopback: nothing else could reach a port")
    return address


def test_an_auth_off_run_is_reachable_on_loopback_only(tmp_path, other_address):
    svc, actor, learner, _, thread = start_service(tmp_path)
    net = svc.config.net
    assert resolve_auth(Config.model_validate(svc.config.model_dump()), str(tmp_path / "auth")) is None
    store = open_store(net.learner_address, net.store_port, True, 5.0)  # what the learner's broadcaster opens
    try:
        assert open_store(net.learner_address, net.store_port, False, 5.0) is not None  # clients still get in
        for port in (net.buffer_actor_port, net.buffer_learner_port, net.store_port):
            assert reachable("127.0.0.1", port), port
            assert not reachable(other_address, port), f"port {port} listens on {other_address}"
    finally:
        del store
        stop_service(svc, thread, actor, learner)


def test_the_learner_ranks_store_listens_on_loopback_only(monkeypatch, other_address):
    """A sharded learner (here one rank in bfloat16) opens the ranks' store at MASTER_ADDR:MASTER_PORT."""
    import torch.distributed as dist

    from asyncor.learner.parallel import init_ranks

    config = Config.model_validate({})
    assign_ports(config)
    port = config.net.learner_port
    monkeypatch.setenv("MASTER_ADDR", config.net.learner_address)
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    ranks = init_ranks("bfloat16", 10.0)
    try:
        assert ranks.sharded and dist.is_initialized()
        assert reachable("127.0.0.1", port)
        assert not reachable(other_address, port), f"the learner ranks' store listens on {other_address}"
    finally:
        dist.destroy_process_group()


def test_a_store_at_a_non_loopback_address_listens_as_torch_does(other_address):
    """Cluster runs advertise a node address: the store keeps torch's behaviour there (every interface; the
    docs say to keep the port on a private network)."""
    config = Config.model_validate({})
    assign_ports(config)
    store = open_store(other_address, config.net.store_port, True, 5.0)
    try:
        assert reachable(other_address, config.net.store_port)
    finally:
        del store


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("127.0.1.1")
    assert not is_loopback("192.0.2.7") and not is_loopback("0.0.0.0")
