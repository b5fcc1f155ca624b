"""The broadcast group: a TCP store owned by the learner, and one process group per membership epoch.

Groups are *stateless*: their own `ProcessGroupGloo` / `ProcessGroupNCCL` objects on the learner's store
(`net.store_port`), never `init_process_group`, so they cannot collide with the default process group or
vLLM's. Membership changes (an actor died, an actor (re)joined) make a new group: epoch e's group keys live
under `asyncor/weights/<e>` in the same store, so a new group never meets an old one's leftovers. The
learner is rank 0; the actors of an epoch are ranks 1..k in actor-id order, told to each in a `join`
message (sync/broadcaster.py).
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import timedelta

import torch

from asyncor.runtime.names import actor_socket


def hello_identity(actor_id: int) -> bytes:
    """The socket identity of actor `actor_id`'s weight receiver: its hello must come from it."""
    return actor_socket(actor_id, "weights").encode()


def pick_backend(setting: str, device: torch.device) -> str:
    if setting != "auto":
        return setting
    return "nccl" if device.type == "cuda" else "gloo"


def is_loopback(host: str) -> bool:
    """True when `host` resolves to a loopback address (127.0.0.0/8, ::1): reachable from this machine only."""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM))
    except (OSError, ValueError):
        return False


def _listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on `host`'s address only (torch's own store server would listen on every one)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's server does: a restart rebinds
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


def open_store(host: str, port: int, is_master: bool, timeout_s: float) -> torch.distributed.TCPStore:
    """A store at `host:port`: the master (is_master) or a client of it; clients may connect at any time (a
    restarted actor). The store has no authentication, so a master whose `host` is a loopback address (a
    one-host run, where net.auth "auto" leaves CURVE off) listens there only: no other machine can reach it.
    Otherwise it listens on every interface, as torch does (docs/security.md: firewall it)."""
    timeout = timedelta(seconds=timeout_s)
    if not (is_master and is_loopback(host)):
        return torch.distributed.TCPStore(host, port, None, is_master=is_master, timeout=timeout,
                                          wait_for_workers=False, use_libuv=True)
    sock = _listening_socket(host, port)
    try:
        store = torch.distributed.TCPStore(host, port, None, is_master=True, timeout=timeout, wait_for_workers=False,
                                           master_listen_fd=sock.fileno(), use_libuv=True)
    except BaseException:
        sock.close()
        raise
    sock.detach()  # the store's server owns the descriptor now
    return store


def make_group(store, epoch: int, rank: int, world_size: int, backend: str, timeout_s: float):
    """Epoch `epoch`'s process group. gloo: blocks until all `world_size` ranks joined, or raises past
    `timeout_s`; NCCL: its communicator is made lazily, in the first collective, whose `Work.wait(timeout)`
    is then the deadline. Use its own `.broadcast`; it is not registered with torch.distributed."""
    timeout = timedelta(seconds=timeout_s)
    prefixed = torch.distributed.PrefixStore(f"asyncor/weights/{epoch}", store)
    if backend == "nccl":
        return torch.distributed.ProcessGroupNCCL(prefixed, rank, world_size)  # deadlines: Work.wait(timeout)
    return torch.distributed.ProcessGroupGloo(prefixed, rank, world_size, timeout)


def abandon(pg) -> None:
    """Drop a group after a failure: NCCL communicators are aborted (a hung collective would otherwise keep its
    stream busy); gloo closes its connections when the object goes, which ends the peers' pending collectives."""
    abort = getattr(pg, "abort", None)
    if callable(abort):
        try:
            abort()
        except Exception:  # already broken: nothing more to release
            pass
