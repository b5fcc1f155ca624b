"""Request and reply over the transport (wire/transport.py), with deadlines.

`Client` wraps a connection: `request` sends one message and waits at most `timeout_s` for the reply that
carries the same request id (`rid`); a late reply to an earlier, timed-out request is discarded, never
mistaken for the current one. A send that cannot be queued before the deadline (the connection's queue
full) and a reply that does not come in time both raise `TimeoutError` naming the peer; with no live
server, or the CURVE handshake refused, the send is still queued (wire/transport.py) and it is the reply
that times out. A reply that does not decode, or whose request id is not an int, is discarded and counted
(`refused`, by reason), as a late one is: the request goes on waiting for its own reply until the deadline.
`request_many` sends several requests at once and collects their replies (one round trip for all).

`Server` wraps a listener: `recv` gives (peer identity, raw bytes); `answer` sends a typed reply
(wire/messages.py) to that peer with the request's id echoed (only an int: anything else a peer put in
`rid` is answered with none), and returns the `Delivery`: a reply to a peer that is gone or not reading is
not sent (the peer times out and retries or fails).

Concurrency. Producer of requests: the thread that uses the `Client` (one thread at a time: its
connection is a ZeroMQ socket, not thread-safe). Consumer: the role that owns the `Server`, on its own
loop. Blocking: `request` / `request_many` / `call` block their caller for at most `timeout_s`;
`Server.recv` blocks until a message, so the owner calls it after the listener is readable; `answer`
never blocks. Dropped: replies whose request id is not awaited (late ones) or that do not decode (counted),
and answers the server could not queue.
"""

from __future__ import annotations

import collections
import itertools
import time

from asyncor.wire.envelope import Message, ProtocolError, decode, encode, request_id
from asyncor.wire.messages import Body, body
from asyncor.wire.transport import Connection, Delivery, Listener, Transport


class Client:
    def __init__(self, conn: Connection, max_bytes: int, peer: str):
        """`peer`: the server's name in error messages; `max_bytes`: larger replies are refused."""
        self.conn = conn
        self.max_bytes = max_bytes
        self.peer = peer
        self.refused: collections.Counter = collections.Counter()  # replies that did not decode, by reason
        self._rids = itertools.count(1)

    def _send(self, data: bytes, type_: str, deadline: float, timeout_s: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or not self.conn.writable(left) or not self.conn.send(data):
            raise TimeoutError(f"could not send {type_!r} to {self.peer} within {timeout_s:.0f}s (not connected?)")

    def request(self, type_: str, body_: dict, timeout_s: float) -> Message:
        rid = next(self._rids)
        deadline = time.monotonic() + timeout_s
        self._send(encode(type_, {**body_, "rid": rid}), type_, deadline, timeout_s)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conn.readable(left):
                raise TimeoutError(f"no reply from {self.peer} to {type_!r} within {timeout_s:.0f}s")
            reply = self._reply()
            if reply is not None and request_id(reply.body) == rid:
                return reply

    def request_many(self, type_: str, bodies: list[dict], timeout_s: float) -> list[Message | None]:
        """Send every request at once, then collect the replies by request id: one round trip's latency for
        all of them. A request with no reply within `timeout_s` gets None."""
        at = {}
        deadline = time.monotonic() + timeout_s
        for i, body_ in enumerate(bodies):
            rid = next(self._rids)
            at[rid] = i
            try:
                self._send(encode(type_, {**body_, "rid": rid}), type_, deadline, timeout_s)
            except TimeoutError:
                break  # the rest get None, as requests without a reply
        replies: list[Message | None] = [None] * len(bodies)
        while at:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conn.readable(left):
                break
            reply = self._reply()
            i = at.pop(request_id(reply.body), None) if reply is not None else None
            if i is not None:
                replies[i] = reply
        return replies

    def _reply(self) -> Message | None:
        """The next reply, decoded; None (counted by reason) when it does not decode."""
        try:
            return decode(self.conn.recv(), self.max_bytes)
        except ProtocolError as exc:
            self.refused[exc.reason] += 1
            return None

    def call(self, message: Body, timeout_s: float) -> Message:
        """`request` with a typed message (wire/messages.py); the reply still needs `messages.parse`."""
        return self.request(message.TYPE, body(message), timeout_s)

    def close(self) -> None:
        self.conn.close()


def connect(transport: Transport, address: str, identity: str, max_bytes: int, peer: str, keys=None) -> Client:
    """A request/reply client of the server at `address`."""
    return Client(transport.connect(address, identity, keys), max_bytes, peer)


class Server:
    def __init__(self, listener: Listener):
        self.listener = listener

    def recv(self) -> tuple[bytes, bytes]:
        return self.listener.recv()

    def answer(self, peer: bytes, request: Message | None, message: Body) -> Delivery:
        """Reply with a typed message (wire/messages.py), echoing the request's id (None: the request did not
        decode)."""
        rid = request_id(request.body) if request is not None else None
        return self.listener.send(peer, encode(message.TYPE, {**body(message), "rid": rid}))

    def close(self) -> None:
        self.listener.close()
