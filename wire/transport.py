"""ZeroMQ transport: a request/reply client (DEALER) and a server socket (ROUTER).

Every socket is bounded (high-water marks) and every wait has a deadline.
`Client.request` sends one message and waits at most `timeout_s` for the reply
carrying the same request id (`rid`); a late reply to an earlier, timed-out
request is discarded, never mistaken for the current one. Timeouts raise
`TimeoutError` naming the peer. Sockets use linger 0 so a dying process never
blocks on unsent data.
"""

from __future__ import annotations

import itertools
import time

import zmq

from asyncor.wire.curve import CurveKeys, secure_client, secure_server
from asyncor.wire.messages import Body
from asyncor.wire.messages import body as wire_body
from asyncor.wire.envelope import Message, decode, encode

HWM = 1000


def endpoint(host: str, port: int) -> str:
    return f"tcp://{host}:{port}"


class Client:
    def __init__(self, ctx: zmq.Context, address: str, identity: str, max_bytes: int, peer: str,
                 keys: CurveKeys | None = None):
        """`keys`: the run's CURVE keys (net.auth = "curve", wire/curve.py); None: plain TCP."""
        self.sock = ctx.socket(zmq.DEALER)
        secure_client(self.sock, keys)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, HWM)
        self.sock.setsockopt(zmq.RCVHWM, HWM)
        self.sock.setsockopt(zmq.IDENTITY, identity.encode())
        self.sock.connect(address)
        self.max_bytes = max_bytes
        self.peer = peer
        self._rids = itertools.count(1)

    def _send(self, data: bytes, type_: str, deadline: float, timeout_s: float) -> None:
        """Send within the deadline: a DEALER with no live connection (server gone, CURVE handshake refused,
        queue full) would otherwise block in send for ever."""
        left = deadline - time.monotonic()
        if left <= 0 or not self.sock.poll(int(left * 1000) + 1, zmq.POLLOUT):
            raise TimeoutError(f"could not send {type_!r} to {self.peer} within {timeout_s:.0f}s (not connected?)")
        self.sock.send(data, zmq.NOBLOCK)

    def request(self, type_: str, body: dict, timeout_s: float) -> Message:
        rid = next(self._rids)
        deadline = time.monotonic() + timeout_s
        self._send(encode(type_, {**body, "rid": rid}), type_, deadline, timeout_s)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                raise TimeoutError(f"no reply from {self.peer} to {type_!r} within {timeout_s:.0f}s")
            reply = decode(self.sock.recv(), self.max_bytes)
            if reply.body.get("rid") == rid:
                return reply

    def request_many(self, type_: str, bodies: list[dict], timeout_s: float) -> list[Message | None]:
        """Send every request at once, then collect the replies by request id: one round trip's latency for
        all of them. A request with no reply within `timeout_s` gets None."""
        at = {}
        deadline = time.monotonic() + timeout_s
        for i, body in enumerate(bodies):
            rid = next(self._rids)
            at[rid] = i
            try:
                self._send(encode(type_, {**body, "rid": rid}), type_, deadline, timeout_s)
            except TimeoutError:
                break  # the rest get None, as requests without a reply
        replies: list[Message | None] = [None] * len(bodies)
        while at:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                break
            reply = decode(self.sock.recv(), self.max_bytes)
            i = at.pop(reply.body.get("rid"), None)
            if i is not None:
                replies[i] = reply
        return replies

    def call(self, message: Body, timeout_s: float) -> Message:
        """`request` with a typed message (wire/messages.py); the reply still needs `messages.parse`."""
        return self.request(message.TYPE, wire_body(message), timeout_s)

    def send(self, type_: str, body: dict) -> None:
        """Fire-and-forget (used for `bye`)."""
        self.sock.send(encode(type_, body), zmq.NOBLOCK)

    def answer(self, identity: bytes, request: Message | None, message: Body) -> None:
        """Reply with a typed message (wire/messages.py)."""
        self.reply(identity, request, message.TYPE, wire_body(message))

    def close(self) -> None:
        self.sock.close(linger=0)


class Server:
    """A ROUTER socket: `recv` returns (identity, raw bytes); `reply` echoes the request id."""

    def __init__(self, ctx: zmq.Context, address: str, keys: CurveKeys | None = None):
        self.sock = ctx.socket(zmq.ROUTER)
        secure_server(self.sock, keys)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, HWM)
        self.sock.setsockopt(zmq.RCVHWM, HWM)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if keys is not None:  # every peer proved it holds the run's keys: a restarted actor's connection may take
            # over its dead predecessor's identity at once (without CURVE an identity is freed when its TCP
            # connection closes, and no stranger can take over a live peer's)
            self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.bind(address)

    def recv(self) -> tuple[bytes, bytes]:
        frames = self.sock.recv_multipart()
        return frames[0], frames[-1]

    def reply(self, identity: bytes, request: Message | None, type_: str, body: dict) -> None:
        rid = request.body.get("rid") if request is not None else None
        try:
            self.sock.send_multipart([identity, encode(type_, {**body, "rid": rid})], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # peer gone (EHOSTUNREACH) or its queue full: it will time out and retry or fail

    def answer(self, identity: bytes, request: Message | None, message: Body) -> None:
        """Reply with a typed message (wire/messages.py)."""
        self.reply(identity, request, message.TYPE, wire_body(message))

    def close(self) -> None:
        self.sock.close(linger=0)
