"""The transport seam: how raw messages move between processes, and nothing about what they mean.

Two kinds of endpoint, both bounded (`queue` messages per peer, `QUEUE` by default) and never blocking on a
send:

* a `Listener` is bound at an address and talks to many peers: every message it receives is tagged with the
  sending peer's identity, and a reply goes to one identity (`send` says whether it was queued, the peer's
  queue was full, or the peer is gone). With CURVE `keys` an identity is authenticated: a message under the
  identity `ROLE` or `ROLE/<channel>` reaches the caller only when it came from the key issued to ROLE
  (wire/curve.py); the others are dropped and counted (`impostors`). Without keys an identity is whatever
  the peer claims;
* a `Connection` is connected to one listener under an identity of its own; its messages arrive in order.
  It queues sends from the moment it is made, whether or not a listener is there yet (or ever: the server
  gone, a CURVE handshake refused); such messages wait in its queue and a request on it times out waiting
  for the reply (wire/rpc.py).

A `Transport` makes them (`listen`, `connect`), waits on several listeners at once (`wait`) and is closed
once by its owner. Waits take a timeout in seconds: every wait has a deadline. Messages are bytes (the
envelope: wire/envelope.py); request ids, replies and deadlines are built on top (wire/rpc.py).

There is one implementation, ZeroMQ (wire/zeromq.py: ROUTER listeners, DEALER connections, CURVE when
`keys` are given); nothing outside it imports zmq. Role logic that takes decoded messages can be driven in
a test without any transport at all (the buffer's is: buffer/service.py).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from asyncor.wire.curve import CurveKeys

QUEUE = 1000  # messages a connection or a listener queues per peer before sends fail (or receives stop)


class Delivery(enum.Enum):
    SENT = "sent"  # queued for the peer
    FULL = "full"  # the peer's queue is full: it is not reading; nothing was sent
    GONE = "gone"  # no connection with that identity (it closed, or never connected)


class Listener(Protocol):
    impostors: int
    """Messages dropped before reaching the caller because their identity was not issued to their key (CURVE)."""

    def readable(self, timeout_s: float) -> bool:
        """True when a message is waiting (within `timeout_s`)."""

    def recv(self) -> tuple[bytes, bytes]:
        """(peer identity, message); blocks until one arrives: call after `readable`."""

    def send(self, peer: bytes, raw: bytes) -> Delivery: ...

    def close(self) -> None: ...


class Connection(Protocol):
    def readable(self, timeout_s: float) -> bool: ...

    def writable(self, timeout_s: float) -> bool:
        """True when a send would be queued now: the connection's queue has room. That says nothing about a
        live peer (with no server, or a refused handshake, it is writable until its queue is full)."""

    def recv(self) -> bytes: ...

    def send(self, raw: bytes) -> bool:
        """Queue one message; False (nothing sent) when the queue is full. True means queued, not delivered."""

    def close(self) -> None: ...


class Transport(Protocol):
    def listen(self, address: str, keys: CurveKeys | None = None, max_bytes: int | None = None,
               queue: int = QUEUE) -> Listener:
        """Bind `address` (`tcp://HOST:PORT`). With `keys` (a listening role's: the server secret key and every
        role's public key) only peers holding a role's key get in, each speaking only as that role;
        `max_bytes`: a peer that sends a larger message is disconnected before the message reaches our code
        (what else it had in flight on that connection is lost too)."""

    def connect(self, address: str, identity: str | None, keys: CurveKeys | None = None,
                queue: int = QUEUE) -> Connection:
        """Connect to a listener at `address` as `identity` (the listener sees it on every message; None: one
        the transport makes up, unique among the listener's peers). With `keys` (a role's), `identity` must be
        the role's name or `<name>/<channel>` (ValueError otherwise)."""

    def wait(self, listeners: list[Listener], timeout_s: float) -> list[Listener]:
        """The listeners with a message waiting, after at most `timeout_s`."""

    def close(self) -> None: ...


def endpoint(host: str, port: int) -> str:
    return f"tcp://{host}:{port}"
