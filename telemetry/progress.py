"""Progress and ETA of work a user waits on, and the reader that shows a phase's progress in the launcher.

    with Progress("warm start", total=steps, unit="steps", log=log) as progress:
        for step in range(steps):
            ...
            progress.update(1, loss=round(loss, 4))

Who produces, who consumes: the work's own loop (prepare/warm_start.py, actors/evaluate.py, studies/sweep.py,
report.py, advisor.py, dataset_eval.py) calls `update(n)` after each unit done (`skip(n)` for units that cost
nothing, such as a sweep's runs done before: they count as done but not into the rate). `Progress` writes the
structured log event `progress` (what, unit, done, total, pct, rate_per_s, elapsed_s, eta_s, final, plus the
caller's own fields) through `log` (a role's JSON-lines log, or the console for a `launch.py` command): at most
one line every `every_s` seconds, and always one when closed (`final` true). When stderr is an interactive
terminal it draws a `rich` bar there instead of the periodic lines (the final line is still logged).

The ETA is the units left over a smoothed rate: each emitted line closes a window (the units done since the
previous line over its seconds), and the rate is an exponential moving average of the windows' rates
(`smoothing`, the weight of the newest window); before the first window the rate is the mean since the start.
Unknown (None) until a unit has been done, and without a total; 0 once done reaches total. The final line's
rate is the mean over the whole run.

`ProgressTail` is the consumer in the launcher (launcher/run.py `run_phase`): a phase that runs as a child
process (prepare, eval_before, eval_after) logs to `logs/<role>.jsonl` locally and to its output,
`logs/<role>.out`, on a cluster (telemetry/log.py), so the launcher reads the bytes appended to both since its
last look and prints the latest `progress` line (`describe`) at most every `every_s`. This needs no shared
filesystem and nothing from the phase but its log.

What blocks: nothing. `Progress` has no thread of its own (rich's bar refreshes from its own thread while drawn)
and only writes one log line per call at most; `ProgressTail.poll` reads at most `MAX_READ` bytes of each file
and waits on nothing, so no deadline applies. What is dropped: progress between emitted lines (only the latest
figures are logged); of the logs, everything but the latest valid `progress` record; bytes beyond `MAX_READ`
appended since the last poll (only the newest are read); lines longer than `MAX_LINE` and any line that is
not a JSON object with the `progress` event and numeric figures (a role's output is untrusted text).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable

EVENT = "progress"
MAX_READ = 1 << 20  # bytes of a log read per poll: the latest progress line is near its end
MAX_LINE = 1 << 16  # a progress line is a few hundred bytes; longer lines are someone else's


def duration(seconds: float | None) -> str:
    """`45 s`, `3 min 20 s`, `2 h 05 min`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def describe(record: dict) -> str:
    """One line for a person: `warm start: 150/400 steps (38 %), 12.5 steps/s, 12 s elapsed, ETA 20 s`."""
    unit = f" {record['unit']}" if record.get("unit") else ""
    total = record.get("total")
    done = f"{record['done']}/{total}{unit}" if total is not None else f"{record['done']}{unit}"
    if record.get("pct") is not None:
        done += f" ({record['pct']:.0f} %)"
    parts = [f"{record['what']}: {done}"]
    rate = record.get("rate_per_s")
    if rate is not None:
        parts.append(f"{rate:.3g}{unit or ' units'}/s")
    parts.append(f"{duration(record.get('elapsed_s'))} elapsed")
    if record.get("final"):
        parts.append("done" if not record.get("stopped") else "stopped")
    else:
        parts.append(f"ETA {duration(record.get('eta_s'))}")
    return ", ".join(parts)


def _interactive() -> bool:
    try:
        return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


class Progress:
    """Counts units done out of `total` (None: unknown) and logs the `progress` event (module docstring).

    `clock` (seconds, monotonic) is injectable for tests; `bar` None draws the rich bar only when stderr is an
    interactive terminal. `fields` are logged with every line; `update`'s keyword arguments replace them."""

    def __init__(self, what: str, total: int | None, log=None, every_s: float = 5.0, unit: str = "",
                 clock: Callable[[], float] = time.monotonic, bar: bool | None = None, smoothing: float = 0.3,
                 **fields):
        if total is not None and total < 0:
            raise ValueError(f"Progress total {total}: must be >= 0 or None (unknown)")
        if not 0 < smoothing <= 1:
            raise ValueError(f"Progress smoothing {smoothing}: must be in (0, 1]")
        if log is None:
            from asyncor.telemetry import log as tlog

            log = tlog.get()
        self.what, self.total, self.unit, self.log = what, total, unit, log
        self.every_s, self.clock, self.smoothing = every_s, clock, smoothing
        self.fields = dict(fields)
        self.start = self.last_line = clock()
        self.done = 0
        self.skipped = 0  # done without work (not in the rate)
        self.rate: float | None = None  # smoothed units per second, once a window has closed
        self._window = (self.start, 0)  # (time, worked units) where the current window began
        self.closed = False
        self._bar = _Bar(what, total, unit) if (_interactive() if bar is None else bar) else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(stopped=exc_type is not None)

    @property
    def worked(self) -> int:
        return self.done - self.skipped

    def update(self, n: int = 1, **fields) -> None:
        """`n` more units done; a line is logged if `every_s` has passed since the last one."""
        self.done += n
        self.fields.update(fields)
        self._tick()

    def skip(self, n: int = 1) -> None:
        """`n` more units done at no cost (cached, done before): counted as done, not into the rate."""
        self.done += n
        self.skipped += n
        self._tick()

    def current_rate(self, now: float | None = None) -> float | None:
        """Units per second: the smoothed rate, or before the first window closes the mean since the start."""
        if self.rate is not None:
            return self.rate
        elapsed = (self.clock() if now is None else now) - self.start
        return self.worked / elapsed if self.worked > 0 and elapsed > 0 else None

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds left at the current rate; None while unknown (no unit done yet, or no total)."""
        if self.total is None:
            return None
        if self.done >= self.total:
            return 0.0
        rate = self.current_rate(now)
        return (self.total - self.done) / rate if rate else None

    def record(self, now: float | None = None) -> dict:
        """The figures of a `progress` line, at `now` (default: the clock's time)."""
        now = self.clock() if now is None else now
        rate = self.current_rate(now)
        eta = self.eta_s(now)
        pct = None
        if self.total is not None:
            pct = 100.0 if self.total == 0 else round(100.0 * min(self.done, self.total) / self.total, 1)
        return {**self.fields, "what": self.what, "unit": self.unit, "done": self.done, "total": self.total,
                "pct": pct, "rate_per_s": None if rate is None else float(f"{rate:.4g}"),
                "elapsed_s": round(now - self.start, 3), "eta_s": None if eta is None else round(eta, 1),
                "final": self.closed}

    def close(self, stopped: bool = False) -> None:
        """Log the final line (once)."""
        if self.closed:
            return
        now = self.clock()
        if self.worked > 0 and now > self.start:  # the whole run's mean: the last window may be a sliver
            self.rate = self.worked / (now - self.start)
        self.closed = True
        record = self.record(now)
        if stopped:
            record["stopped"] = True
        if self._bar is not None:
            self._bar.update(self.done, record)
            self._bar.close()
        self.log.info(EVENT, **record)

    def _close_window(self, now: float) -> None:
        start, worked = self._window
        if self.worked > worked and now > start:  # a window without work (only skips) leaves the rate as it was
            window_rate = (self.worked - worked) / (now - start)
            self.rate = window_rate if self.rate is None else (
                self.smoothing * window_rate + (1 - self.smoothing) * self.rate)
            self._window = (now, self.worked)

    def _tick(self) -> None:
        if self.closed:
            return
        now = self.clock()
        if self._bar is not None:
            self._bar.update(self.done, self.record(now))
        if now - self.last_line < self.every_s:
            return
        self._close_window(now)
        self.last_line = now
        if self._bar is None:  # the bar shows it already
            self.log.info(EVENT, **self.record(now))


class _Bar:
    """A rich progress bar on stderr with this module's ETA (not rich's own estimate)."""

    def __init__(self, what: str, total: int | None, unit: str):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.progress = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn(unit), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
                                     console=Console(stderr=True))
        self.task = self.progress.add_task(what, total=total, eta="?")
        self.progress.start()

    def update(self, done: int, record: dict) -> None:
        self.progress.update(self.task, completed=done, total=record["total"], eta=duration(record["eta_s"]))

    def close(self) -> None:
        self.progress.stop()


def parse_line(line: bytes) -> dict | None:
    """The `progress` record of one log line (JSON, possibly after a prefix), or None for any other line."""
    if len(line) > MAX_LINE or b'"' + EVENT.encode() + b'"' not in line:
        return None
    start = line.find(b"{")
    if start < 0:
        return None
    try:
        record = json.loads(line[start:])
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.get("event") != EVENT or not isinstance(record.get("what"), str):
        return None
    for key in ("done", "elapsed_s"):
        if not _number(record.get(key)):
            return None
    for key in ("total", "pct", "rate_per_s", "eta_s"):
        if record.get(key) is not None and not _number(record[key]):
            return None
    if not isinstance(record.get("unit", ""), str):
        return None
    record["what"] = record["what"][:200]
    record["unit"] = record.get("unit", "")[:40]
    return record


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ProgressTail:
    """The latest `progress` record appended to any of `paths` (module docstring): `poll` returns a line to
    print when a new record has arrived and `every_s` has passed since the last line printed, else None."""

    def __init__(self, paths: list[str], every_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 from_end: bool = False):
        self.paths = list(paths)
        self.offsets = {p: _size(p) if from_end else 0 for p in self.paths}
        self.partial = {p: b"" for p in self.paths}
        self.every_s, self.clock = every_s, clock
        self.latest: dict | None = None
        self.new = False
        self.printed_at: float | None = None

    @classmethod
    def for_role(cls, log_dir: str, role: str, every_s: float = 10.0) -> ProgressTail:
        """A role's structured log (`<role>.jsonl`, local) and its output (`<role>.out`, cluster), from their
        current ends (a role's logs are appended to: what an earlier process of that name wrote is not news)."""
        return cls([os.path.join(log_dir, f"{role}.jsonl"), os.path.join(log_dir, f"{role}.out")], every_s,
                   from_end=True)

    def read(self) -> None:
        """Take in whatever was appended since the last read."""
        for path in self.paths:
            try:
                size = os.path.getsize(path)
                if size < self.offsets[path]:  # truncated or replaced: start over
                    self.offsets[path], self.partial[path] = 0, b""
                start = max(self.offsets[path], size - MAX_READ)
                if start > self.offsets[path]:
                    self.partial[path] = b""  # skipped bytes: the kept partial line is not continued
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read(size - start)
            except OSError:  # not there (yet): the other file may be the one written
                continue
            self.offsets[path] = start + len(data)
            lines = (self.partial[path] + data).split(b"\n")
            self.partial[path] = lines.pop()  # a torn last line waits for the rest
            if len(self.partial[path]) > MAX_LINE:
                self.partial[path] = b""
            for line in lines:
                record = parse_line(line)
                if record is not None:
                    self.latest, self.new = record, True

    def poll(self) -> str | None:
        self.read()
        now = self.clock()
        if not self.new or (self.printed_at is not None and now - self.printed_at < self.every_s):
            return None
        self.new, self.printed_at = False, now
        return describe(self.latest)
