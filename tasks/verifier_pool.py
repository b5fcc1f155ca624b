"""A bounded pool of verifier processes with a hard deadline per job.

The actor scores a chunk of responses through `VerifierPool.score(jobs)` (tasks/scoring.py `Scorer`).
Each job (a math answer or a program to test) runs in one of `workers`
long-lived processes; a job still running at its deadline has its worker
killed and replaced, and scores 0. Jailed, every process of the worker's
sandbox run dies with it (tasks/code_sandbox.py); without the jail, only the
run's first process has a parent-death signal, and what it forked may outlive
the worker. A slow or hostile sample therefore costs at most its deadline and
never blocks the others beyond it.

A third kind, "custom", calls the user's reward function of `task.reward` (tasks/user_reward.py) in the same
workers under the same deadline; its failures come back with a reason ("import", "error", "not_a_number",
"nan"), and the pool adds "timeout" and "crash" (a worker that died): `failures` counts them all, by reason.

Boundary: parent and workers exchange JSON messages over pipes
(`{"id", "kind", "response", "reference"[, "problem", "metadata"]}` -> `{"id", "reward"[, "failure",
"details"]}`); nothing is pickled. A reply is checked (a finite number) before use. Workers are started
with "spawn" (never fork a process holding a vLLM engine and its threads) and are child subreapers, so the orphans of a
killed sandbox are reaped instead of left as zombies.

Concurrency. Producer: the thread that calls `score` (an actor's outbox thread, or evaluation); `score`
is not thread-safe: one caller at a time. Consumers: the worker processes, one job each at a time.
Blocking: `score` blocks its caller until every job has a reward: at most about ceil(jobs / workers)
deadlines, plus the time to start replacement workers; `close` waits up to 2 s per worker before killing it.
Dropped: nothing is queued beyond the call's own jobs; a job past its deadline, or whose worker died (e.g. the
OOM killer), scores 0 (the first counted in `timeouts`). A verifier's own error is a 0 too, never a dead worker.
"""

from __future__ import annotations

import collections
import ctypes
import json
import math
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import wait

from asyncor.tasks.code_sandbox import Limits, check_jail

PR_SET_CHILD_SUBREAPER = 36
KINDS = ("math", "code", "custom")


@dataclass(frozen=True)
class VerifierJob:
    kind: str  # "math" | "code" | "custom"
    response: str
    reference: object  # math: the gold answer (str); code: the tests (dict); custom: the task's reference
    problem: dict | None = None  # custom: the user function's `problem` (tasks/user_reward.py)
    metadata: dict | None = None  # custom: its `metadata`


@dataclass(frozen=True)
class PoolSettings:
    workers: int = 2
    deadline_s: float = 40.0  # per job, enforced from outside the worker
    math_timeout_s: int = 5  # math-verify's own parse / verify timeouts
    code_total_s: float = 30.0  # all tests of one program
    code_limits: Limits = Limits()
    code_fraction: bool = False  # reward = passed fraction instead of all-or-nothing
    reward_path: str | None = None  # task.reward "package.module:function": the "custom" kind's function
    sandbox: bool = True  # build the code sandbox (needs the jail); False for a pool that scores "custom" only


def _reap_orphans() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _worker_main(conn, slot: int, settings: PoolSettings) -> None:
    from asyncor.tasks.code_reward import code_reward
    from asyncor.tasks.code_sandbox import Sandbox
    from asyncor.tasks.math_reward import math_reward
    from asyncor.tasks import user_reward

    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1)
    sandbox = Sandbox(slot, settings.code_limits) if settings.sandbox else None
    custom = None
    if settings.reward_path:
        try:
            custom = user_reward.load(settings.reward_path)
        except user_reward.RewardImportError as exc:
            print(f"verifier-{slot}: {exc}", flush=True)  # the actor's log; every custom sample fails "import"
    while True:
        raw = conn.recv_bytes()
        if not raw:
            return
        job = json.loads(raw)
        reply = {"id": job["id"]}
        try:
            if job["kind"] == "custom":
                if custom is None:
                    reward, reply["failure"] = 0.0, "import"
                else:
                    reward, failure, details = user_reward.call(custom, job["problem"], job["response"],
                                                                job["metadata"])
                    if failure:
                        reply["failure"] = failure
                    if details:
                        reply["details"] = _plain_details(details)
            elif job["kind"] == "math":
                reward = math_reward(job["response"], str(job["reference"]), settings.math_timeout_s)
            else:
                reward = code_reward(job["response"], job["reference"], sandbox, settings.code_total_s,
                                     settings.code_fraction)
        except Exception:  # noqa: BLE001 - a verifier error is a 0 for that sample, never a dead worker
            reward = 0.0
        _reap_orphans()
        reply["reward"] = float(reward)
        conn.send_bytes(json.dumps(reply).encode())


def _plain_details(details: dict) -> dict:
    """The finite numbers of a user reward's details (at most 16, short names): they become metrics."""
    out = {}
    for key, value in details.items():
        if len(out) == 16:
            break
        if (isinstance(key, str) and 0 < len(key) <= 64 and not isinstance(value, bool)
                and isinstance(value, (int, float)) and math.isfinite(value)):
            out[key] = float(value)
    return out


class _Worker:
    def __init__(self, ctx, slot: int, settings: PoolSettings):
        self.slot = slot
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, slot, settings), daemon=True,
                                name=f"verifier-{slot}")
        self.proc.start()
        child.close()
        self.job: int | None = None
        self.started = 0.0

    def kill(self) -> None:
        """Kill the worker. Jailed, its sandbox run dies with it (its `unshare` child and the namespace's first
        process have a parent-death signal; the worker's uid lease ends with its process). Without the jail,
        only the run's first process has that signal (module docstring)."""
        self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class VerifierPool:
    def __init__(self, settings: PoolSettings = PoolSettings()):
        if settings.sandbox:
            check_jail()  # here, in the caller: a worker that cannot build its sandbox would only score zeros
        self.settings = settings
        self._ctx = mp.get_context("spawn")
        self._workers = [_Worker(self._ctx, slot, settings) for slot in range(settings.workers)]
        self.timeouts = 0  # jobs killed at their deadline, since start
        self.failures: collections.Counter = collections.Counter()  # custom jobs scored 0, by reason
        self.details: list[dict] = []  # custom rewards' numeric details since the caller last took them

    def score(self, jobs: list[VerifierJob]) -> list[float]:
        """Rewards in job order; blocks until every job finished or hit its deadline."""
        for job in jobs:
            if job.kind not in KINDS:
                raise ValueError(f"verifier kind must be one of {KINDS}, got {job.kind!r}")
        rewards = [0.0] * len(jobs)
        pending = list(range(len(jobs)))
        busy: dict[int, _Worker] = {}
        while pending or busy:
            for worker in self._workers:
                if pending and worker.job is None:
                    i = pending.pop(0)
                    job = jobs[i]
                    message = {"id": i, "kind": job.kind, "response": job.response, "reference": job.reference}
                    if job.kind == "custom":
                        message.update(problem=job.problem, metadata=job.metadata)
                    worker.conn.send_bytes(json.dumps(message, default=str).encode())
                    worker.job, worker.started = i, time.monotonic()
                    busy[i] = worker
            now = time.monotonic()
            timeout = max(0.0, min(w.started + self.settings.deadline_s - now for w in busy.values()))
            ready = wait([w.conn for w in busy.values()], timeout=timeout)
            for worker in list(busy.values()):
                if worker.conn in ready:
                    try:
                        reply = json.loads(worker.conn.recv_bytes())
                        reward = reply["reward"]
                        if reply["id"] != worker.job or not isinstance(reward, float) or not math.isfinite(reward):
                            raise ValueError(f"bad reply {reply!r:.200}")
                        rewards[worker.job] = reward
                        if jobs[worker.job].kind == "custom":
                            if reply.get("failure"):
                                self.failures[str(reply["failure"])] += 1
                            if isinstance(reply.get("details"), dict) and reply["details"]:
                                self.details.append(reply["details"])
                        busy.pop(worker.job)
                        worker.job = None
                        continue
                    except (EOFError, OSError, ValueError, KeyError, TypeError):
                        pass  # the worker died (e.g. killed by the OOM killer, or a custom reward's os._exit)
                    if jobs[worker.job].kind == "custom":
                        self.failures["crash"] += 1
                elif time.monotonic() < worker.started + self.settings.deadline_s:
                    continue
                else:
                    self.timeouts += 1
                    if jobs[worker.job].kind == "custom":
                        self.failures["timeout"] += 1
                busy.pop(worker.job)
                self._replace(worker)
        return rewards

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        index = self._workers.index(worker)
        self._workers[index] = _Worker(self._ctx, worker.slot, self.settings)

    def close(self) -> None:
        for worker in self._workers:
            try:
                worker.conn.send_bytes(b"")
            except OSError:
                pass
            worker.proc.join(timeout=2)
            if worker.proc.is_alive():
                worker.kill()

    def __enter__(self) -> "VerifierPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
