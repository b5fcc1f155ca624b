"""The launcher's end of the telemetry links (telemetry/link.py): the only writer of a run's
`metrics.jsonl` and `roles/<role>.json`.

A thread in the launcher process with one ROUTER socket. Messages are
untrusted like any other on the wire: the envelope is checked, a metrics
record must be a map of plain values (numbers, strings, booleans, null, lists
and maps of them, at most 6 deep: wire/messages.py `plain`) from a role of
this run, and a summary must name one (`run_roles`: buffer, learner, eval and
actor<i> for the `actors` the launcher starts; summaries also from prepare,
eval_before and eval_after). Anything else is refused and counted by reason
(`refused`), never written: what a peer claims never makes a file, a
TensorBoard writer or its thread, which the run's roles bound. Summaries are
written atomically (temp + rename) and acknowledged; so is a `flush` (a role
asking that every record it sent before be written). Records are
fire-and-forget: sent without a request id, so not answered.

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
(`tensorboard_errors`: metrics.jsonl still has them); records an experiment
tracker's queue could not take (launcher/tracker_thread.py: each tracker's
`dropped`, in the run summary's `trackers`). Every record written is handed to
each tracker (`trackers`: W&B, MLflow) by a non-blocking enqueue; their threads,
started with this one, do the writing. On timeout: `stop` lets the thread write
what has already arrived, waiting for it up to 10 s, then closes the files and
the socket, then the trackers (ending the tracker runs as failed unless
launcher/run.py closed them with the run summary first; `CLOSE_S` at most).
"""

from __future__ import annotations

import collections
import json
import os
import threading

from asyncor.runtime.names import actor_name
from asyncor.wire.envelope import ProtocolError, decode, preview, request_id
from asyncor.wire.messages import Ack, Flush, MetricsRecord, RoleSummary, parse, plain
from asyncor.wire.rpc import Server
from asyncor.wire.transport import endpoint
from asyncor.wire.zeromq import ZmqTransport
from asyncor.runtime.run_dir import RunDir

MESSAGES = {m.TYPE: m for m in (MetricsRecord, Flush, RoleSummary)}
MAX_BYTES = 16 << 20
# The roles that log metrics besides the actors (runtime/names.py), `eval` being the held-out evaluations'
# records; summaries come from these (eval aside) and from the roles that run before and after training.
RECORD_ROLES = frozenset({"learner", "buffer", "eval"})
SUMMARY_ROLES = frozenset({"learner", "buffer", "prepare", "eval_before", "eval_after"})


def run_roles(actors: int) -> tuple[frozenset[str], frozenset[str]]:
    """The roles whose (metrics records, summaries) a run with `actors` actors takes: actor0 .. actor<n-1>
    besides the fixed ones."""
    names = frozenset(actor_name(i) for i in range(actors))
    return RECORD_ROLES | names, SUMMARY_ROLES | names


def check_record(record: dict, roles: frozenset[str]) -> dict:
    """A JSON-able copy of a metrics record from one of `roles`; ProtocolError otherwise."""
    record = plain(record)
    role = record.get("role")
    if not isinstance(role, str) or role not in roles:  # (a list is no set member: it is not even hashable)
        raise ProtocolError("bad_value", f"record role {preview(role)} is not one of this run's")
    step = record.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ProtocolError("bad_value", f"record step {preview(step)}")
    if not isinstance(record.get("ts"), (int, float)) or isinstance(record.get("ts"), bool):
        raise ProtocolError("bad_field", "record ts")
    bad = [k for k in record if k not in ("ts", "role", "step") and "/" not in k]
    if bad:
        raise ProtocolError("bad_field", f"metric names without role/: {bad[:3]}")
    return record


def check_summary(role: str, summary: dict, roles: frozenset[str]) -> tuple[str, dict]:
    """The role and a JSON-able copy of its summary, if `role` is one of `roles`; ProtocolError otherwise."""
    if role not in roles:
        raise ProtocolError("bad_value", f"summary role {preview(role)} is not one of this run's")
    return role, plain(summary)


class Collector:
    def __init__(self, run_dir: str, bind: str, port: int, keys=None, tensorboard: bool = False, actors: int = 1,
                 trackers=()):
        """`keys`: the run's CURVE keys (wire/curve.py) when net.auth is curve; `tensorboard`: every record
        also goes to TensorBoard event files (launcher/tensorboard.py); `actors`: how many actors the launcher
        starts (actors.count): records and summaries of actor<i> are taken for i below it only; `trackers`:
        TrackerThreads (launcher/tracker_thread.py, not yet started) every record is handed to."""
        self.trackers = list(trackers)
        self.run_dir = run_dir
        self.record_roles, self.summary_roles = run_roles(actors)
        self.server = Server(ZmqTransport().listen(endpoint(bind, port), keys, max_bytes=MAX_BYTES))
        self.files = RunDir(run_dir)
        os.makedirs(self.files.roles, exist_ok=True)
        self._metrics = open(self.files.metrics, "a")
        self._tensorboard = None
        self.tensorboard_errors = 0  # records metrics.jsonl has but the event files could not take
        if tensorboard:
            from asyncor.launcher.tensorboard import TensorBoardSink

            self._tensorboard = TensorBoardSink(run_dir, roles=self.record_roles)
        self.summaries: dict[str, dict] = {}
        self.refused: collections.Counter = collections.Counter()
        self.records = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="telemetry-collector", daemon=True)

    def start(self) -> "Collector":
        for tracker in self.trackers:  # each opens its tracker run on its own thread (wandb.init takes seconds)
            tracker.start()
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
        if self.trackers:
            from asyncor.launcher.tracker_thread import close_trackers

            close_trackers(self.trackers, None)  # those launcher/run.py closed with the summary are done already

    def _loop(self) -> None:
        while True:
            if not self.server.listener.readable(0.1):
                if self._stop.is_set():
                    return
                continue
            ident, raw = self.server.recv()
            self.handle(ident, raw)

    def handle(self, ident: bytes, raw: bytes) -> None:
        """One message: written and acknowledged (when it carries a request id), or refused and counted.
        Decoding and parsing raise nothing but ProtocolError (wire/envelope.py)."""
        try:
            msg = decode(raw, MAX_BYTES)
            kind = MESSAGES.get(msg.type)
            if kind is None:
                raise ProtocolError("unknown_type", f"{msg.type!r} is not for the launcher")
            m = parse(msg, kind)
            if isinstance(m, MetricsRecord):
                record = check_record(m.record, self.record_roles)
                self._metrics.write(json.dumps(record) + "\n")
                self._metrics.flush()
                self.records += 1
                if self._tensorboard is not None:
                    try:
                        self._tensorboard.write(record)
                    except Exception:  # noqa: BLE001 - events are a copy: metrics.jsonl has the record
                        self.tensorboard_errors += 1
                for tracker in self.trackers:  # an enqueue, never a wait
                    tracker.submit(record)
            elif isinstance(m, RoleSummary):
                self._write_summary(*check_summary(m.role, m.summary, self.summary_roles))
        except ProtocolError as exc:
            self.refused[exc.reason] += 1
            return
        if request_id(msg.body) is not None:
            self._metrics.flush()
            self.server.answer(ident, msg, Ack())

    def _write_summary(self, role: str, summary: dict) -> None:
        path = self.files.role(role)
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=2)
        os.replace(path + ".tmp", path)
        self.summaries[role] = summary
