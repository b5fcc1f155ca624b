"""The signals that stop a run: Ctrl-C (SIGINT), SIGTERM (kill, scancel, a job's time limit), SIGHUP.

While a `StopSignals` block is active the handlers only record the signal;
the launcher's wait loops call `check()`, which raises `Interrupted` at that
known point, and the caller's `finally` stops every role. Nothing is raised
from inside a handler: such an exception can land anywhere, for example
inside `subprocess.Popen.poll()` between taking and releasing its wait lock
(every later poll then reports the child as running), or inside the
shutdown itself. A second signal during the shutdown changes nothing; the
shutdown is bounded on its own (the back-end's `stop`: launcher/processes.py
on one host).

SIGINT and SIGTERM are caught even when the launcher inherited them ignored.
A non-interactive shell starts background jobs (`launch.py run &` in a
script, CI runners, test harnesses) with SIGINT ignored, and Python keeps an
inherited SIG_IGN, so before this module the launcher ignored Ctrl-C and
`kill -INT` and trained on while its roles kept running (torchrun also
installs its own handlers unconditionally). SIGHUP stays ignored where it
was, so `nohup launch.py run` keeps running after the terminal closes.
"""

from __future__ import annotations

import signal
import sys

CAUGHT = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
KEEP_IF_IGNORED = (signal.SIGHUP,)


class Interrupted(Exception):
    """A stop signal arrived; every role has been (or is being) stopped."""

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"{self.name} received")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (SIGINT 130, SIGTERM 143)."""
        return 128 + self.signum


class StopSignals:
    """`with StopSignals() as stop: ... stop.check() ...`; the previous handlers come back on exit."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _record(self, signum: int, _frame) -> None:
        if self.received is None:
            self.received = signum

    def __enter__(self) -> "StopSignals":
        for sig in CAUGHT:
            previous = signal.getsignal(sig)
            if sig in KEEP_IF_IGNORED and previous == signal.SIG_IGN:
                continue
            self._previous[sig] = signal.SIG_DFL if previous is None else previous  # None: set outside Python
            signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def check(self) -> None:
        """Raise `Interrupted` if a stop signal has arrived (say so at once: the shutdown takes a moment)."""
        if self.received is not None:
            print(f"\n{signal.Signals(self.received).name} received: stopping every role ...", file=sys.stderr,
                  flush=True)
            raise Interrupted(self.received)
