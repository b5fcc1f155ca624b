"""The launcher's end of the telemetry links (telemetry/link.py): the only writer of a run's
`metrics.jsonl` and `roles/<role>.json`.

A thread in the launcher process with one ROUTER socket. Messages are
untrusted like any other on the wire: the envelope is checked, a metrics
record must be a map of plain values (numbers, strings, booleans, null, lists
and maps of them, at most `MAX_DEPTH` deep) from a known role, and a summary
must name a known role. Anything else is refused and counted by reason
(`refused`), never written. Summaries are written atomically (temp + rename)
and acknowledged; so is a `flush` (a role asking that every record it sent
before be written). Records are fire-and-forget: sent without a request id,
so not answered.

Who produces, who consumes: every role's link (telemetry/link.py) sends;
this thread is the only consumer, and writes metrics.jsonl (flushed per
record), the TensorBoard events when `telemetry.tensorboard` is on, and
roles/<role>.json; the launcher's main thread reads the summaries
(`result`, `has_summary`) and tails metrics.jsonl (launcher/status.py).
What blocks: the thread waits up to 0.1 s at a time for a message and
checks whether it is to stop only when none is waiting; writes are
synchronous. Bounds: the socket's high-water mark (wire/zeromq.py) and
`MAX_BYTES` per message. What can be dropped: a refused message (counted,
never answered: a refused `flush` or summary leaves its sender to its own
deadline, and the role then writes its summary itself,
runtime/role_summary.py); records a role's link could not queue (the link's
`dropped`); records the TensorBoard sink could not take
(`tensorboard_errors`: metrics.jsonl still has them). On timeout: `stop`
lets the thread write what has already arrived, waiting for it up to 10 s,
then closes the files and the socket.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import threading

from asyncor.wire.envelope import ProtocolError, decode
from asyncor.wire.messages import Ack, Flush, MetricsRecord, RoleSummary, parse
from asyncor.wire.rpc import Server
from asyncor.wire.transport import endpoint
from asyncor.wire.zeromq import ZmqTransport
from asyncor.runtime.run_dir import RunDir

MESSAGES = {m.TYPE: m for m in (MetricsRecord, Flush, RoleSummary)}
MAX_BYTES = 16 << 20
MAX_DEPTH = 6
MAX_STR = 4096
# The roles that log metrics (runtime/names.py), and `eval`, the held-out evaluations' records.
RECORD_ROLE = re.compile(r"^(learner|buffer|eval|actor\d{1,6})$")
SUMMARY_ROLE = re.compile(r"^(learner|buffer|actor\d{1,6}|prepare|eval_before|eval_after)$")


def plain(obj, depth: int = 0):
    """A JSON-able copy of a decoded msgpack value, or ProtocolError. Non-finite floats become null (JSON has
    none)."""
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        if abs(obj) >= 1 << 63:
            raise ProtocolError("bad_value", "integer out of range")
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        if len(obj) > MAX_STR:
            raise ProtocolError("bad_value", f"string longer than {MAX_STR}")
        return obj
    if depth >= MAX_DEPTH:
        raise ProtocolError("bad_field", f"nested deeper than {MAX_DEPTH}")
    if isinstance(obj, list):
        return [plain(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) and len(k) <= 256 for k in obj):
            raise ProtocolError("bad_field", "map keys must be strings")
        return {k: plain(v, depth + 1) for k, v in obj.items()}
    raise ProtocolError("bad_field", f"value of type {type(obj).__name__}")


def check_record(record: dict) -> dict:
    record = plain(record)
    if not isinstance(record.get("role"), str) or not RECORD_ROLE.match(record["role"]):
        raise ProtocolError("bad_value", f"record role {record.get('role')!r}")
    step = record.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ProtocolError("bad_value", f"record step {step!r}")
    if not isinstance(record.get("ts"), (int, float)) or isinstance(record.get("ts"), bool):
        raise ProtocolError("bad_field", "record ts")
    bad = [k for k in record if k not in ("ts", "role", "step") and "/" not in k]
    if bad:
        raise ProtocolError("bad_field", f"metric names without role/: {bad[:3]}")
    return record


def check_summary(role: str, summary: dict) -> tuple[str, dict]:
    if not SUMMARY_ROLE.match(role):
        raise ProtocolError("bad_value", f"summary role {role!r}")
    return role, plain(summary)


class Collector:
    def __init__(self, run_dir: str, bind: str, port: int, keys=None, tensorboard: bool = False):
        """`keys`: the run's CURVE keys (wire/curve.py) when net.auth is curve; `tensorboard`: every record
        also goes to TensorBoard event files (launcher/tensorboard.py)."""
        self.run_dir = run_dir
        self.server = Server(ZmqTransport().listen(endpoint(bind, port), keys, max_bytes=MAX_BYTES))
        self.files = RunDir(run_dir)
        os.makedirs(self.files.roles, exist_ok=True)
        self._metrics = open(self.files.metrics, "a")
        self._tensorboard = None
        self.tensorboard_errors = 0  # records metrics.jsonl has but the event files could not take
        if tensorboard:
            from asyncor.launcher.tensorboard import TensorBoardSink

            self._tensorboard = TensorBoardSink(run_dir)
        self.summaries: dict[str, dict] = {}
        self.refused: collections.Counter = collections.Counter()
        self.records = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="telemetry-collector", daemon=True)

    def start(self) -> "Collector":
        self._thread.start()
        return self

    def has_summary(self, role: str) -> bool:
        return role in self.summaries or os.path.exists(self.files.role(role))

    def result(self, role: str) -> dict | None:
        """The summary `role` sent (or, when it could not reach the collector, wrote to roles/ itself)."""
        if role in self.summaries:
            return self.summaries[role]
        path = self.files.role(role)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def stop(self) -> None:
        """Write what has arrived, then close."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._metrics.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        self.server.close()

    def _loop(self) -> None:
        while True:
            if not self.server.listener.readable(0.1):
                if self._stop.is_set():
                    return
                continue
            ident, raw = self.server.recv()
            self.handle(ident, raw)

    def handle(self, ident: bytes, raw: bytes) -> None:
        try:
            msg = decode(raw, MAX_BYTES)
            kind = MESSAGES.get(msg.type)
            if kind is None:
                raise ProtocolError("unknown_type", f"{msg.type!r} is not for the launcher")
            m = parse(msg, kind)
            if isinstance(m, MetricsRecord):
                record = check_record(m.record)
                self._metrics.write(json.dumps(record) + "\n")
                self._metrics.flush()
                self.records += 1
                if self._tensorboard is not None:
                    try:
                        self._tensorboard.write(record)
                    except Exception:  # noqa: BLE001 - events are a copy: metrics.jsonl has the record
                        self.tensorboard_errors += 1
            elif isinstance(m, RoleSummary):
                self._write_summary(*check_summary(m.role, m.summary))
        except ProtocolError as exc:
            self.refused[exc.reason] += 1
            return
        rid = msg.body.get("rid")
        if isinstance(rid, int) and not isinstance(rid, bool):
            self._metrics.flush()
            self.server.answer(ident, msg, Ack())

    def _write_summary(self, role: str, summary: dict) -> None:
        path = self.files.role(role)
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=2)
        os.replace(path + ".tmp", path)
        self.summaries[role] = summary
