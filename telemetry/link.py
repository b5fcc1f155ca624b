"""A role's line to the launcher's telemetry collector (launcher/collector.py).

Run by `launch.py`, every role sends its metrics records and its final summary
to the launcher as messages, wherever it runs: the launcher is then the only
writer of `metrics.jsonl` and `roles/`, so nothing depends on appends from
several nodes to one file on a shared filesystem (not atomic on NFS).

One link per process and collector address (`link_to`), one connection, so
messages arrive in the order they were sent: when the launcher acknowledges a
message (`flush`, a summary) every record sent before it is already written.

Producers: any thread of the role (MetricsWriter.log -> `record`; at the end
`flush` through MetricsWriter.close and `summary` through
runtime/role_summary.py). Consumer: the launcher's
collector. Records are fire-and-forget on a bounded queue: if the launcher
falls behind by `HWM` records (or is not there), newer ones are dropped and
counted (`dropped`), never blocking training. What blocks: `flush` and
`summary` wait for the launcher's `ack` at most `timeout_s` (False past it:
the caller falls back or gives up), holding the link's lock, so a `record`
from another thread waits for them meanwhile; a reply that does not decode is
skipped and counted (`refused`, by reason). Unsent records are dropped at
exit.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time

from asyncor.wire.curve import ENV, from_env
from asyncor.wire import messages as wire
from asyncor.wire.envelope import ProtocolError, decode, encode, request_id
from asyncor.wire.zeromq import ZmqTransport

HWM = 10_000

_links: dict[str, "LauncherLink"] = {}
_links_lock = threading.Lock()


def link_to(address: str) -> "LauncherLink":
    """This process's link to the collector at `address` (created on first use)."""
    with _links_lock:
        if address not in _links:
            _links[address] = LauncherLink(address)
        return _links[address]


class LauncherLink:
    def __init__(self, address: str):
        # Unsent records are dropped at exit (what matters is acknowledged before: flush, summary). net.auth =
        # "curve": the launcher gave this role the run's keys (wire/curve.py).
        self.conn = ZmqTransport().connect(address, None, from_env() if ENV in os.environ else None, queue=HWM)
        self.address = address
        self.dropped = 0
        self.refused: collections.Counter = collections.Counter()  # replies that did not decode, by reason
        self._rids = itertools.count(1)
        self._lock = threading.Lock()  # roles log from more than one thread; a ZeroMQ socket is not thread-safe

    def record(self, record: dict) -> None:
        with self._lock:
            if not self.conn.send(wire.encode_message(wire.MetricsRecord(record=record))):
                self.dropped += 1

    def flush(self, timeout_s: float) -> bool:
        """Wait until the launcher has written every record sent so far; False past the deadline."""
        return self._acknowledged(wire.Flush(), timeout_s)

    def summary(self, name: str, summary: dict, timeout_s: float) -> bool:
        """Send the role's final figures; True once the launcher has them on disk (and every earlier record)."""
        return self._acknowledged(wire.RoleSummary(role=name, summary=summary), timeout_s)

    def _acknowledged(self, message: wire.Body, timeout_s: float) -> bool:
        with self._lock:
            rid = next(self._rids)
            if not self.conn.send(encode(message.TYPE, {**wire.body(message), "rid": rid, "pid": os.getpid()})):
                return False
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0 and self.conn.readable(left + 0.001):
                try:
                    reply = decode(self.conn.recv(), 1 << 16)
                except ProtocolError as exc:
                    self.refused[exc.reason] += 1
                    continue
                if reply.type == wire.Ack.TYPE and request_id(reply.body) == rid:
                    return True
            return False
