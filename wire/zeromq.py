"""The ZeroMQ transport (wire/transport.py): the only module that imports zmq.

A listener is a ROUTER socket: `ROUTER_MANDATORY`, so a reply to a peer that is gone fails (`GONE`) instead
of vanishing. A connection is a DEALER socket with its identity. Every socket has high-water marks (`queue`)
and linger 0, so a dying process never blocks on unsent data, and sends never block (`zmq.NOBLOCK`). A
DEALER queues sends as soon as it is made, before (or without) any listener taking the connection: a send
says "queued", never "delivered".

CURVE (`net.auth = "curve"`, wire/curve.py, docs/security.md): a listener encrypts with the server secret
key and lets in only connections that prove they hold the secret key of one of the run's roles (a ZAP
handler per ZeroMQ context looks the client's public key up in `keys.peers`, and names the role in the
`User-Id` of every message from that connection); a connection must know the server's public key and hold
its role's pair. A peer without a role's key can neither connect nor inject: its handshake fails before
any message reaches our code. Identities are bound to keys (`_Identities`): a connection made with an
identity `ROLE[/channel]` travels as `ROLE[/channel]#<ROLE's routing tag>`, and a listener hands a message
on (with the tag removed) only when its User-Id is ROLE and the tag is ROLE's; anything else is dropped and
counted (`Listener.impostors`). A connection made without an identity gets `ROLE/<random>`. With the tag
unguessable, `ROUTER_HANDOVER` lets only the same role's new
connection (a restarted actor) take over a live name at once. Without CURVE there is no handover: an
identity is freed once the listener has seen its TCP connection close (the kernel closes it when a process
dies), and a second connection with a name in use gets no messages through until it reconnects.

Concurrency. Producers and consumers are the role's own threads, each socket used by one thread at a
time (a ZeroMQ socket is not thread-safe; the only thread this module starts is one ZAP handler per
context that has a CURVE listener). Blocking: `recv` waits for a message, so callers call it after
`readable` / `wait`; `readable`, `writable` and `wait` return at their timeout (False, nothing ready).
Dropped: a send to a peer whose queue holds `queue` messages (`FULL` / False: the caller decides), a
listener's reply to a peer that is gone (`GONE`), a message over `max_bytes` (ZeroMQ disconnects its
sender), a message whose identity is not its key's (counted), and whatever is still queued when a socket
closes (linger 0).
"""

from __future__ import annotations

import functools
import hmac
import os
import threading
import time

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from asyncor.wire.curve import CurveKeys, RunKeys, routing_tag
from asyncor.wire.transport import QUEUE, Delivery


def keypair() -> tuple[bytes, bytes]:
    """A new CURVE key pair (public, secret), Z85 text."""
    return zmq.curve_keypair()


def generate_keys(roles: list[str], servers: set[str], server_pair: tuple[bytes, bytes] | None = None) -> RunKeys:
    """A run's keys: the server pair (`server_pair`, or a new one) and a new pair for each of `roles`;
    `servers`: the roles that listen (they also get the server secret and every role's public key)."""
    server_public, server_secret = server_pair or keypair()
    return RunKeys(server_public, server_secret, {role: keypair() for role in roles}, frozenset(servers))


def load_server_pair(directory: str) -> tuple[bytes, bytes]:
    """The server pair given by the user (`net.curve_keys`): server.key_secret in `directory`, in ZeroMQ's
    certificate format (zmq.auth.create_certificates writes it; wire/curve.py `save_keys` too)."""
    from zmq.auth import load_certificate

    path = os.path.join(directory, "server.key_secret")
    try:
        public, secret = load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"net.curve_keys: cannot read {path} ({exc}); it needs server.key_secret "
                         "(zmq.auth.create_certificates writes it)") from None
    if not secret:
        raise ValueError(f"net.curve_keys: {path} holds no secret key")
    return public, secret


class _KeyTable(ThreadAuthenticator):
    """A context's ZAP handler: lets in the public keys of `users` and names each connection's role."""

    def __init__(self, context: zmq.Context):
        super().__init__(context)
        self.users: dict[bytes, str] = {}  # Z85 public key -> role (the union over this context's listeners)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.users

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.users[z85.encode(client_public_key)]


_authenticators: dict[int, _KeyTable] = {}  # id(context) -> its ZAP handler
_lock = threading.Lock()


@functools.lru_cache(maxsize=4096)
def _tag(server_secret: bytes, role: str) -> bytes:
    return routing_tag(server_secret, role).encode()


def _owner(name: bytes) -> str:
    """The role an identity `ROLE` or `ROLE/<channel>` belongs to."""
    return name.split(b"/", 1)[0].decode(errors="replace")


class _Identities:
    """A CURVE listener's rule: a message's identity must be its key's (see the module docstring)."""

    def __init__(self, server_secret: bytes):
        self.server_secret = server_secret

    def name_of(self, routing_id: bytes, user: str | None) -> bytes | None:
        """The identity callers see (the tag removed), or None when the message is not from the key the identity
        was issued to."""
        name, _, tag = routing_id.rpartition(b"#")
        if not name or _owner(name) != user or not hmac.compare_digest(tag, _tag(self.server_secret, user)):
            return None
        return name

    def routing_id(self, peer: bytes) -> bytes:
        return peer + b"#" + _tag(self.server_secret, _owner(peer))


def _routing_id(identity: str | None, keys: CurveKeys | None) -> bytes | None:
    """What a connection sends as its identity: with CURVE `ROLE[/channel]#tag` (ValueError for an identity of
    another role; `ROLE/<random>` when none is given), else `identity` as it is (None: ZeroMQ makes one up)."""
    if keys is None:
        return identity.encode() if identity is not None else None
    identity = identity or f"{keys.role}/{os.urandom(8).hex()}"
    if identity.split("/", 1)[0] != keys.role:
        raise ValueError(f"identity {identity!r} is not one of role {keys.role!r}'s: with CURVE a role speaks only "
                         f"as '{keys.role}' or '{keys.role}/<channel>'")
    return f"{identity}#{keys.tag}".encode()


def _user_id(frame: zmq.Frame) -> str | None:
    """The role our ZAP handler named for the connection a message came from (None: no name, refused)."""
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:
        return None


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


class ZmqListener:
    def __init__(self, sock: zmq.Socket, identities: _Identities | None = None):
        self.sock = sock
        self.identities = identities  # CURVE: identities bound to keys
        self.impostors = 0
        self._next: tuple[bytes, bytes] | None = None  # a message taken off the socket that passed the check

    def _take(self) -> bool:
        """Take waiting messages, never blocking, until one passes the identity check: True when one is held."""
        while self._next is None:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return False
            peer = frames[0].bytes
            if self.identities is not None:
                peer = self.identities.name_of(peer, _user_id(frames[-1]))
                if peer is None:
                    self.impostors += 1
                    continue
            self._next = (peer, frames[-1].bytes)
        return True

    def readable(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self._take():
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(_ms(left)):
                return False
        return True

    def recv(self) -> tuple[bytes, bytes]:
        while not self._take():
            self.sock.poll()
        message, self._next = self._next, None
        return message

    def send(self, peer: bytes, raw: bytes) -> Delivery:
        to = self.identities.routing_id(peer) if self.identities is not None else peer
        try:
            self.sock.send_multipart([to, raw], zmq.NOBLOCK)
            return Delivery.SENT
        except zmq.Again:  # its queue is full: it is not reading
            return Delivery.FULL
        except zmq.ZMQError:  # EHOSTUNREACH (ROUTER_MANDATORY): no connection with that identity
            return Delivery.GONE

    def close(self) -> None:
        self.sock.close(linger=0)


class ZmqConnection:
    def __init__(self, sock: zmq.Socket):
        self.sock = sock

    def readable(self, timeout_s: float) -> bool:
        return bool(self.sock.poll(_ms(timeout_s)))

    def writable(self, timeout_s: float) -> bool:
        return bool(self.sock.poll(_ms(timeout_s), zmq.POLLOUT))

    def recv(self) -> bytes:
        return self.sock.recv()

    def send(self, raw: bytes) -> bool:
        try:
            self.sock.send(raw, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def close(self) -> None:
        self.sock.close(linger=0)


class ZmqTransport:
    """Sockets on one ZeroMQ context: the process's shared one by default."""

    def __init__(self, context: zmq.Context | None = None):
        self.ctx = context or zmq.Context.instance()
        self._own = context is not None

    @classmethod
    def private(cls) -> "ZmqTransport":
        """A transport with a context of its own, terminated by `close` (a role's server sockets)."""
        return cls(zmq.Context())

    def listen(self, address: str, keys: CurveKeys | None = None, max_bytes: int | None = None,
               queue: int = QUEUE) -> ZmqListener:
        if keys is not None and not (keys.server_secret and keys.peers):
            raise ValueError(f"role {keys.role!r} holds no server secret key or no peers' keys: it was not issued "
                             "keys to listen with (launcher/auth.py SERVERS)")
        sock = self.ctx.socket(zmq.ROUTER)
        identities = None
        if keys is not None:
            self._start_authenticator(keys)
            sock.curve_secretkey = keys.server_secret
            sock.curve_publickey = keys.server_public
            sock.curve_server = True
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # only the same role can (its identity carries its tag)
            identities = _Identities(keys.server_secret)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, queue)
        sock.setsockopt(zmq.RCVHWM, queue)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if max_bytes is not None:
            sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        sock.bind(address)
        return ZmqListener(sock, identities)

    def connect(self, address: str, identity: str | None, keys: CurveKeys | None = None,
                queue: int = QUEUE) -> ZmqConnection:
        routing_id = _routing_id(identity, keys)
        sock = self.ctx.socket(zmq.DEALER)
        if keys is not None:  # talk to a server holding the run's server key, proving the role's own key
            sock.curve_serverkey = keys.server_public
            sock.curve_publickey = keys.client_public
            sock.curve_secretkey = keys.client_secret
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, queue)
        sock.setsockopt(zmq.RCVHWM, queue)
        if routing_id is not None:  # else ZeroMQ makes one up, unique for the listener
            sock.setsockopt(zmq.IDENTITY, routing_id)
        sock.connect(address)
        return ZmqConnection(sock)

    def wait(self, listeners: list[ZmqListener], timeout_s: float) -> list[ZmqListener]:
        deadline = time.monotonic() + timeout_s
        poller = zmq.Poller()
        for listener in listeners:
            poller.register(listener.sock, zmq.POLLIN)
        while True:
            ready = [listener for listener in listeners if listener._take()]
            left = deadline - time.monotonic()
            if ready or left <= 0 or not poller.poll(_ms(left)):
                return ready

    def _start_authenticator(self, keys: CurveKeys) -> None:
        """One ZAP handler per context (whoever shares it), started before the first CURVE listener binds."""
        with _lock:
            if id(self.ctx) not in _authenticators:
                authenticator = _KeyTable(self.ctx)
                authenticator.start()
                authenticator.configure_curve_callback("*", credentials_provider=authenticator)
                _authenticators[id(self.ctx)] = authenticator
            _authenticators[id(self.ctx)].users.update({public: role for role, public in keys.peers.items()})

    def close(self) -> None:
        """A context of the transport's own: stop its ZAP handler (which holds one of its sockets) and terminate
        it; the caller has closed its listeners and connections. The shared context lives with the process."""
        if not self._own:
            return
        with _lock:
            authenticator = _authenticators.pop(id(self.ctx), None)
        if authenticator is not None:
            authenticator.stop()
        self.ctx.term()
