"""Experiment trackers (W&B, MLflow: launcher/wandb_sink.py, launcher/mlflow_sink.py) fed from the launcher's
telemetry collector without ever slowing it: each tracker is a sink driven by a thread of its own through a
bounded queue (docs/trackers.md).

Who produces, who consumes: the collector's thread (launcher/collector.py) hands every record it has written
to metrics.jsonl to `TrackerThread.submit`, which only enqueues; the launcher's main thread (launcher/run.py)
sends the resolved config (`set_config`) and, at the end, the run summary (`close_trackers`). The tracker's
thread is the only caller of its sink: it opens the tracker run (`Sink.open`: wandb.init can take seconds,
a tracking server may not answer), then every `flush_s` (the sink's: W&B 2 s, MLflow 10 s) writes what has
queued, back to back, and asks the sink to `flush` (both send what they buffered in one call per flush; with
a wake-up per flush rather than per record, that is most of what keeps their cost low), and at close logs the
summary and ends the tracker run.

What blocks: nothing on the collector's side (`put_nowait`). The tracker's thread sleeps `flush_s` at a time
(or until the close begins) and waits on its sink as long as the sink takes. What is dropped, and counted in
`stats()` (the run summary's `trackers`): a record that finds the queue full (`dropped`), and every record
after the sink raised or was abandoned (`unsent`). A sink that raises, on open or on any call, is logged
(warning `tracker_failed` with the reason) and dropped for the rest of the run; the run goes on, metrics.jsonl
has every record.
On timeout: `close_trackers` waits `CLOSE_S` in all for every tracker to drain its queue and end its run,
then abandons the ones still busy (warning `tracker_abandoned`; their daemon thread is left to the process's
exit) so the launcher always returns.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Protocol

from asyncor.telemetry import log as tlog

log = tlog.get("launcher")

QUEUE_RECORDS = 10_000  # minutes of records even at 10 a second: a stuck tracker sheds, never grows
FLUSH_S = 2.0
CLOSE_S = 30.0


class Sink(Protocol):
    """One tracker. Every method runs on the tracker's thread; any of them may raise (the tracker is dropped)."""

    name: str

    def open(self) -> None:
        """Start (or, resuming, reopen) the tracker run."""

    def config(self, tree: dict) -> None:
        """The run's resolved config (config.json's tree)."""

    def write(self, record: dict) -> None:
        """One metrics record, as the collector wrote it to metrics.jsonl."""

    def flush(self) -> None:
        """Send what `write` has buffered."""

    def finish(self, summary: dict | None) -> None:
        """Log the run summary (None: the run failed or was stopped) and end the tracker run."""


class TrackerThread:
    def __init__(self, sink: Sink, max_records: int = QUEUE_RECORDS, flush_s: float | None = None):
        """`flush_s`: how often the sink is asked to flush; default the sink's own `flush_s`, else FLUSH_S."""
        self.sink = sink
        self.name = sink.name
        self.flush_s = flush_s if flush_s is not None else getattr(sink, "flush_s", FLUSH_S)
        self.sent = self.dropped = self.unsent = 0
        self.failed: str | None = None
        self.abandoned = False
        self._queue: queue.Queue = queue.Queue(max_records)
        self._closing = threading.Event()
        self._summary: dict | None = None
        self._holding = False  # a record taken off the queue and not yet written: unsent if the sink fails on it
        self._thread = threading.Thread(target=self._loop, name=f"tracker-{self.name}", daemon=True)

    def start(self) -> "TrackerThread":
        self._thread.start()
        return self

    def submit(self, record: dict) -> None:
        """Enqueue a record; never waits (the collector's thread calls it for every record)."""
        if self.failed is not None or self.abandoned or self._closing.is_set():
            self.unsent += 1
            return
        try:
            self._queue.put_nowait(("record", record))
        except queue.Full:
            self.dropped += 1

    def set_config(self, tree: dict) -> None:
        if self.failed is None and not self._closing.is_set():
            try:
                self._queue.put_nowait(("config", tree))
            except queue.Full:  # a queue full of records means a stuck tracker: its config would not get out either
                log.warning("tracker_config_dropped", tracker=self.name, reason="queue full")

    def close(self, summary: dict | None, timeout_s: float = CLOSE_S) -> None:
        self.begin_close(summary)
        self.wait_closed(time.monotonic() + timeout_s)

    def begin_close(self, summary: dict | None) -> None:
        """Let the thread end once its queue is empty: it then logs `summary` and ends the tracker run."""
        if not self._closing.is_set():
            self._summary = summary
            self._closing.set()

    def wait_closed(self, deadline: float) -> None:
        if self.abandoned:  # waited for once already
            return
        if self._thread.ident is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self.abandoned = True
            queued = self._drain()
            self.unsent += queued + self._holding
            log.warning("tracker_abandoned", tracker=self.name,
                        reason=f"still busy when the launcher's wait for it ended ({queued} records queued)")

    def _drain(self) -> int:
        """Empty the queue (the thread is done with it, or stuck); how many records it held."""
        records = 0
        while True:
            try:
                kind_, _ = self._queue.get_nowait()
            except queue.Empty:
                return records
            records += kind_ == "record"

    def stats(self) -> dict:
        return {"sent": self.sent, "dropped": self.dropped, "unsent": self.unsent, "failed": self.failed,
                "abandoned": self.abandoned}

    def _loop(self) -> None:
        try:
            self.sink.open()
            while True:
                # Wake once per flush_s and write everything queued back to back: a wake-up per record would
                # cost more CPU than most records do (and the tracker sees them no later: it sends per flush).
                closing = self._closing.wait(self.flush_s)
                while True:
                    try:
                        kind_, item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if kind_ == "record":
                        self._holding = True
                        self.sink.write(item)
                        self._holding = False
                        self.sent += 1
                    else:
                        self.sink.config(item)
                self.sink.flush()
                if closing:
                    break
            self.unsent += self._drain()  # enqueued as the close began
            self.sink.finish(self._summary)
        except BaseException as exc:  # noqa: BLE001 - any failure of a tracker drops the tracker, never the run
            self.failed = f"{type(exc).__name__}: {exc}"[:500]
            self.unsent += self._drain() + self._holding
            self._holding = False
            log.warning("tracker_failed", tracker=self.name, reason=self.failed)
            abort = getattr(self.sink, "abort", None)
            try:  # end the tracker run as failed where the sink can (best effort: it has just raised)
                if abort is not None:
                    abort()
            except Exception:  # noqa: BLE001
                pass


def make_trackers(config) -> list[TrackerThread]:
    """The trackers `config.telemetry` enables (not started: the collector starts them)."""
    trackers = []
    resume = bool(config.checkpoint.resume_from)
    if config.telemetry.wandb.enabled:
        from asyncor.launcher.wandb_sink import WandbSink

        trackers.append(TrackerThread(WandbSink(config.telemetry.wandb, config.run_dir, config.run.name, resume)))
    if config.telemetry.mlflow.enabled:
        from asyncor.launcher.mlflow_sink import MlflowSink

        trackers.append(TrackerThread(MlflowSink(config.telemetry.mlflow, config.run_dir, config.run.name,
                                                 config.run.output_dir, resume)))
    return trackers


def close_trackers(trackers: list[TrackerThread], summary: dict | None, timeout_s: float = CLOSE_S) -> dict:
    """End every tracker (in parallel, `timeout_s` in all); their stats by name. Closing twice is harmless."""
    for tracker in trackers:
        tracker.begin_close(summary)
    deadline = time.monotonic() + timeout_s
    for tracker in trackers:
        tracker.wait_closed(deadline)
    return {t.name: t.stats() for t in trackers}
