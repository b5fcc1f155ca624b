"""The ZeroMQ transport (wire/transport.py): the only module that imports zmq.

A listener is a ROUTER socket: `ROUTER_MANDATORY`, so a reply to a peer that is gone fails (`GONE`) instead
of vanishing; with CURVE, `ROUTER_HANDOVER`, so a restarted actor's new connection takes over its dead
predecessor's identity at once (every peer proved it holds the run's keys; without CURVE an identity is
freed once the listener has seen its TCP connection close, and no stranger can take over a live peer's).
A connection is a DEALER socket with its identity. Every socket has high-water marks (`queue`) and linger
0, so a dying process never blocks on unsent data, and sends never block (`zmq.NOBLOCK`). A DEALER queues
sends as soon as it is made, before (or without) any listener taking the connection: a send says
"queued", never "delivered".

Concurrency. Producers and consumers are the role's own threads, each socket used by one thread at a
time (a ZeroMQ socket is not thread-safe; the only thread this module starts is one ZAP handler per
context that has a CURVE listener). Blocking: `recv` waits for a message, so callers call it after
`readable` / `wait`; `readable`, `writable` and `wait` return at their timeout (False, nothing ready).
Dropped: a send to a peer whose queue holds `queue` messages (`FULL` / False: the caller decides), a
listener's reply to a peer that is gone (`GONE`), a message over `max_bytes` (ZeroMQ disconnects its
sender), and whatever is still queued when a socket closes (linger 0).

CURVE (`net.auth = "curve"`, wire/curve.py, docs/security.md): a listener encrypts with the server secret
key and lets in only connections that prove they hold the client secret key (a ZAP handler per ZeroMQ
context checks the client's public key); a connection must know the server's public key and hold the client
pair. A peer without the keys can neither connect nor inject: its handshake fails before any message
reaches our code.
"""

from __future__ import annotations

import os
import threading

import zmq

from asyncor.wire.curve import CurveKeys
from asyncor.wire.transport import QUEUE, Delivery


def keypair() -> tuple[bytes, bytes]:
    """A new CURVE key pair (public, secret), Z85 text."""
    return zmq.curve_keypair()


def generate_keys() -> CurveKeys:
    """A run's keys: a server pair and a client pair."""
    server_public, server_secret = keypair()
    client_public, client_secret = keypair()
    return CurveKeys(server_public, server_secret, client_public, client_secret)


def load_keys(directory: str) -> CurveKeys:
    """Keys given by the user (`net.curve_keys`): server.key_secret and client.key_secret in `directory`, in
    ZeroMQ's certificate format (zmq.auth.create_certificates writes them; wire/curve.py `save_keys` too)."""
    from zmq.auth import load_certificate

    pairs = []
    for name in ("server", "client"):
        path = os.path.join(directory, f"{name}.key_secret")
        try:
            public, secret = load_certificate(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"net.curve_keys: cannot read {path} ({exc}); it needs server.key_secret and "
                             "client.key_secret (zmq.auth.create_certificates writes them)") from None
        if not secret:
            raise ValueError(f"net.curve_keys: {path} holds no secret key")
        pairs += [public, secret]
    return CurveKeys(*pairs)


class _AllowedClients:
    """The ZAP check: the client proved it holds the secret of one of these public keys."""

    def __init__(self):
        self.keys: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


_authenticators: dict[int, tuple[object, _AllowedClients]] = {}  # id(context) -> its ZAP handler
_lock = threading.Lock()


class ZmqListener:
    def __init__(self, sock: zmq.Socket):
        self.sock = sock

    def readable(self, timeout_s: float) -> bool:
        return bool(self.sock.poll(max(0, int(timeout_s * 1000))))

    def recv(self) -> tuple[bytes, bytes]:
        frames = self.sock.recv_multipart()
        return frames[0], frames[-1]

    def send(self, peer: bytes, raw: bytes) -> Delivery:
        try:
            self.sock.send_multipart([peer, raw], zmq.NOBLOCK)
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
        return bool(self.sock.poll(max(0, int(timeout_s * 1000))))

    def writable(self, timeout_s: float) -> bool:
        return bool(self.sock.poll(max(0, int(timeout_s * 1000)), zmq.POLLOUT))

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
        sock = self.ctx.socket(zmq.ROUTER)
        if keys is not None:
            self._start_authenticator(keys)
            sock.curve_secretkey = keys.server_secret
            sock.curve_publickey = keys.server_public
            sock.curve_server = True
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, queue)
        sock.setsockopt(zmq.RCVHWM, queue)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if max_bytes is not None:
            sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        sock.bind(address)
        return ZmqListener(sock)

    def connect(self, address: str, identity: str | None, keys: CurveKeys | None = None,
                queue: int = QUEUE) -> ZmqConnection:
        sock = self.ctx.socket(zmq.DEALER)
        if keys is not None:  # talk to a server holding the run's server key, proving the client key
            sock.curve_serverkey = keys.server_public
            sock.curve_publickey = keys.client_public
            sock.curve_secretkey = keys.client_secret
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, queue)
        sock.setsockopt(zmq.RCVHWM, queue)
        if identity is not None:  # else ZeroMQ makes one up, unique for the listener
            sock.setsockopt(zmq.IDENTITY, identity.encode())
        sock.connect(address)
        return ZmqConnection(sock)

    def wait(self, listeners: list[ZmqListener], timeout_s: float) -> list[ZmqListener]:
        poller = zmq.Poller()
        for listener in listeners:
            poller.register(listener.sock, zmq.POLLIN)
        ready = dict(poller.poll(max(0, int(timeout_s * 1000))))
        return [listener for listener in listeners if listener.sock in ready]

    def _start_authenticator(self, keys: CurveKeys) -> None:
        """One ZAP handler per context (whoever shares it), started before the first CURVE listener binds."""
        from zmq.auth.thread import ThreadAuthenticator

        with _lock:
            if id(self.ctx) not in _authenticators:
                authenticator, allowed = ThreadAuthenticator(self.ctx), _AllowedClients()
                authenticator.start()
                authenticator.configure_curve_callback("*", credentials_provider=allowed)
                _authenticators[id(self.ctx)] = (authenticator, allowed)
            _authenticators[id(self.ctx)][1].keys.add(keys.client_public)

    def close(self) -> None:
        """A context of the transport's own: stop its ZAP handler (which holds one of its sockets) and terminate
        it; the caller has closed its listeners and connections. The shared context lives with the process."""
        if not self._own:
            return
        with _lock:
            entry = _authenticators.pop(id(self.ctx), None)
        if entry is not None:
            entry[0].stop()
        self.ctx.term()
