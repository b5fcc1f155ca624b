"""Restarting failed actors: which, when, how often.

An actor that exits with an error while the learner trains is started again (same id, same node, same
arguments, its log appended to) after `actors.restart_backoff_s`, doubling with each restart of that actor
(at most `MAX_BACKOFF_S`), at most `actors.max_restarts` times per actor; past that the run fails as before.
The restarted actor says hello to the buffer (which gives back its predecessor's unfinished grants) and to
the learner's weight sync (which rebuilds the broadcast group and sends it the current weights before it
generates anything). Any other role failing still stops the run: the learner and the buffer hold state that
a restart would lose.
"""

from __future__ import annotations

import time

MAX_BACKOFF_S = 60.0


class ActorRestarts:
    def __init__(self, max_restarts: int, backoff_s: float):
        self.max_restarts = max_restarts
        self.backoff_s = backoff_s
        self.count: dict[str, int] = {}  # role name -> restarts so far
        self.due: dict[str, float] = {}  # role name -> when to start it again (monotonic)
        self.history: list[dict] = []  # one entry per restart, for summary.json

    def schedule(self, name: str, returncode: int | None) -> float | None:
        """Plan a restart of actor `name` after it exited with `returncode`; the wait in seconds, or None when
        it has used up its restarts."""
        done = self.count.get(name, 0)
        if done >= self.max_restarts:
            return None
        delay = min(self.backoff_s * 2 ** done, MAX_BACKOFF_S)
        self.count[name] = done + 1
        self.due[name] = time.monotonic() + delay
        self.history.append({"role": name, "returncode": returncode, "restart": done + 1, "after_s": delay,
                             "at": time.time()})
        return delay

    def ready(self) -> list[str]:
        """Actors whose wait is over (each returned once)."""
        now = time.monotonic()
        names = [n for n, at in self.due.items() if at <= now]
        for n in names:
            del self.due[n]
        return names

    def summary(self) -> dict:
        return {"per_actor": dict(self.count), "events": self.history, "not_restarted_in_time": sorted(self.due)}
