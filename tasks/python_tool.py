"""The python tool (task.env.tool = "python"): a tool call's text runs as a program in the verifiers' sandbox, and
what it printed is the answer (tasks/tool_env.py).

Each call runs in one of a small pool of long-lived worker processes, each owning one `Sandbox`
(tasks/code_sandbox.py: the verifiers' jail and limits) and running `python -I main.py` with the call's text as
main.py. The pool is built like the verifier pool (tasks/verifier_pool.py): workers are started with "spawn" when the
tool is built, before the actor starts vLLM (a process holding an engine and its threads is never forked); they are
child subreapers; parent and worker exchange JSON over pipes, nothing is pickled (a program's message is at most
`MAX_MESSAGE_BYTES`, so sending it to an idle worker never blocks; a longer one is answered with an error text).
Slots are `SLOT_BASE + i`, apart from the verifier pool's 0..workers-1 (they name the runs' cgroups; the sandbox
uid is leased host-wide per `Sandbox`, so the two pools never share one either way).

Concurrency. Producers: the actor's environment threads, calling `run` at once (thread-safe). Consumers: the
workers, one program each at a time. A call checks an idle worker out of a queue, sends the program, and waits
for the answer; everything within one deadline (`deadline_s`, from the call's start, below
task.env.step_timeout_s). Blocking: `run` blocks its thread until the answer or the deadline, plus the time to
kill a worker and start its replacement (milliseconds); `close` waits up to 2 s for the workers in all.
Timeout: no idle worker by the deadline: "tool_timeout", nothing ran. A worker that has not answered by the
deadline, or that died (tool_crash), is killed and replaced, so the pool keeps its size; its sandbox run dies with
it (jailed: every process of it). A worker found dead when the program is sent (it died idle, e.g. the OOM killer)
is replaced and the program sent once more: it never ran. Normally the sandbox's own wall clock (`limits.wall_s`,
below the deadline) stops a hung program first, and the worker is kept. Dropped: nothing is queued beyond the
callers' own calls; a program's output past `output_chars` characters is cut (the environment cuts observations
in tokens anyway).

Answers (the program is the model's and untrusted; its output is checked by `clean_text`):
  printed text                stdout, cut to `output_chars`
  an exception / exit != 0    stdout, then the last `TRACEBACK_LINES` lines of stderr (a Python error is feedback)
  killed by a signal          the same, then "killed by signal N (NAME)"
  tool_timeout                the sandbox's wall clock or CPU limit (SIGXCPU), or the call's deadline
  tool_flood                  a stream past the sandbox's `output_bytes`
  tool_garbage                stdout (or stderr of a failed run) not UTF-8, or control characters
  tool_crash                  the worker died, could not build its sandbox, or the sandbox could not run
"""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import json
import math
import multiprocessing as mp
import queue
import signal
import threading
import time
from typing import Self

from asyncor.tasks.code_sandbox import Limits, RunResult, check_jail
from asyncor.tasks.environment import clean_text
from asyncor.tasks.tool_env import ToolResult
from asyncor.tasks.verifier_pool import PR_SET_CHILD_SUBREAPER, PoolSettings, _reap_orphans

SLOT_BASE = 1000  # sandbox slots of the tool's workers; the verifier pool uses 0..workers-1
MAX_WORKERS = 32  # sandbox uids are leased host-wide (184 of them) and shared with the verifier pools
OUTPUT_CHARS = 4096
TRACEBACK_LINES = 20
DEADLINE_FRACTION = 0.8  # of task.env.step_timeout_s: the call answers before the runner abandons the step
RUN_SLACK_S = 1.0  # deadline - sandbox wall clock: the jail's start (~0.1 s), the kill, the reply
MIN_WALL_S = 0.5
START_TIMEOUT_S = 60.0  # every worker up and its sandbox built, at construction
# A message to a worker must fit the pipe's buffer: a worker only reads when idle, so the send never blocks.
MAX_MESSAGE_BYTES = 60_000
MAX_REPLY_BYTES = 1 << 20
DEFAULT_LIMITS = Limits()
FAILURES = ("tool_timeout", "tool_crash", "tool_flood", "tool_garbage")


def answer(result: RunResult, limits: Limits, output_chars: int) -> tuple[str, str]:
    """A sandbox run as the tool's (output, failure) (module docstring)."""
    if result.output_exceeded:
        return "", "tool_flood"
    if result.timed_out or result.returncode == -signal.SIGXCPU:
        return "", "tool_timeout"
    out, failure = clean_text(result.stdout, limits.output_bytes)
    if failure:
        return "", failure
    if result.returncode == 0:
        return out[:output_chars], ""
    err, failure = clean_text(result.stderr, limits.output_bytes)
    if failure:
        return "", failure
    lines = err.splitlines()[-TRACEBACK_LINES:]
    code = result.returncode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        lines.append(f"killed by signal {-code} ({name})")
    elif not lines:
        lines.append(f"exit status {code}")
    tail = "\n".join(lines)
    tail = tail[max(len(tail) - output_chars // 2, 0):]  # the traceback's end says what went wrong
    head = out[: max(output_chars - len(tail) - 1, 0)]
    return head + ("" if not head or head.endswith("\n") else "\n") + tail, ""


def _worker_main(conn, settings_json: str) -> None:
    """One worker: build the sandbox, say whether it is ready, then run one program per message until an empty
    message or the parent's end of the pipe closes."""
    from asyncor.tasks.code_reward import sandbox_python
    from asyncor.tasks.code_sandbox import Sandbox

    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1)
    settings = json.loads(settings_json)
    limits = Limits(**settings["limits"])
    try:
        sandbox = Sandbox(settings["slot"], limits, settings["jail"])
        python = sandbox_python()
    except Exception as e:  # noqa: BLE001 - the parent reports it (construction) or answers tool_crash
        conn.send_bytes(json.dumps({"ready": False, "error": f"{type(e).__name__}: {e}"}).encode())
        return
    conn.send_bytes(json.dumps({"ready": True}).encode())
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        if not raw:
            return
        job = json.loads(raw)
        try:
            result = sandbox.run([python, "-I", "main.py"], {"main.py": job["source"]})
            output, failure = answer(result, limits, settings["output_chars"])
        except Exception:  # noqa: BLE001 - the sandbox could not run (e.g. out of file descriptors): not fatal here
            output, failure = "", "tool_crash"
        _reap_orphans()
        conn.send_bytes(json.dumps({"id": job["id"], "output": output, "failure": failure}).encode())


class _Worker:
    def __init__(self, ctx, slot: int, settings: dict):
        self.slot = slot
        self.ready = False  # its first message (sandbox built) has been read
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, json.dumps({**settings, "slot": slot})),
                                daemon=True, name=f"python-tool-{slot}")
        self.proc.start()
        child.close()

    def kill(self) -> None:
        """Jailed, the sandbox run dies with the worker (its `unshare` child has a parent-death signal)."""
        self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class PythonTool:
    """`run(source)`: the program's answer (module docstring); thread-safe. `workers` processes, each call
    answered within `deadline_s` (plus a worker's replacement); `limits`: the sandbox's (its wall clock should be
    below the deadline, so a hung program costs no worker); `jail`: as `Sandbox` (None: where available)."""

    def __init__(self, workers: int = 2, deadline_s: float = 8.0, limits: Limits = DEFAULT_LIMITS,
                 output_chars: int = OUTPUT_CHARS, jail: bool | None = None, slot_base: int = SLOT_BASE):
        if jail is not False:
            check_jail()  # here, in the caller: a worker that cannot build its sandbox would only crash
        self.deadline_s = deadline_s
        self.limits = limits
        self._settings = {"limits": dataclasses.asdict(limits), "jail": jail, "output_chars": output_chars}
        self._ctx = mp.get_context("spawn")
        self._lock = threading.Lock()  # guards _workers, _closed; serialises starting replacements
        self._closed = False
        self._ids = itertools.count()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers: list[_Worker] = []
        try:
            for i in range(workers):
                self._workers.append(_Worker(self._ctx, slot_base + i, self._settings))
            self._await_ready(time.monotonic() + START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        for worker in self._workers:
            self._idle.put(worker)

    @classmethod
    def from_config(cls, config) -> PythonTool:
        """The verifiers' sandbox limits, with the wall clock (and CPU time) fitted to task.env.step_timeout_s:
        a call answers within `DEADLINE_FRACTION` of it; one worker per environment thread, at most
        `MAX_WORKERS`."""
        env = config.task.env
        deadline_s = env.step_timeout_s * DEADLINE_FRACTION
        base = PoolSettings().code_limits
        wall_s = min(base.wall_s, deadline_s - RUN_SLACK_S)
        if wall_s < MIN_WALL_S:
            need = (MIN_WALL_S + RUN_SLACK_S) / DEADLINE_FRACTION
            raise ValueError(f"task.env.step_timeout_s = {env.step_timeout_s} is too short for the python tool: it "
                             f"must be at least {need:g} s (a sandbox run needs {MIN_WALL_S} s and the jail's start)")
        # CPU time = the wall clock, rounded up: the CPU limit's hard kill (one second later) then never stops a
        # single-threaded loop before the wall clock does (tool_timeout); in the jail the program is its pid
        # namespace's init, which ignores SIGXCPU, and that kill shows only as "exit status 1".
        limits = dataclasses.replace(base, wall_s=wall_s, cpu_s=max(1, math.ceil(wall_s)))
        return cls(workers=min(env.workers, MAX_WORKERS), deadline_s=deadline_s, limits=limits)

    def _await_ready(self, deadline: float) -> None:
        for worker in self._workers:
            failure, error = self._read_ready(worker, deadline - time.monotonic())
            if failure:
                raise RuntimeError(f"python tool: worker {worker.slot} did not start: {error}")

    @staticmethod
    def _read_ready(worker: _Worker, timeout: float) -> tuple[str, str]:
        """Read a worker's first message: ("", "") once its sandbox is built, else (failure, why)."""
        try:
            if timeout <= 0 or not worker.conn.poll(timeout):
                return "tool_timeout", "no answer within its deadline"
            reply = json.loads(worker.conn.recv_bytes(MAX_REPLY_BYTES))
        except (EOFError, OSError, ValueError):
            return "tool_crash", "it exited"
        if not isinstance(reply, dict) or reply.get("ready") is not True:
            error = reply.get("error") if isinstance(reply, dict) else None
            return "tool_crash", str(error or "an unexpected message")
        worker.ready = True
        return "", ""

    def run(self, source: str) -> ToolResult:
        deadline = time.monotonic() + self.deadline_s
        if self._closed:
            return ToolResult(failure="tool_crash")
        job_id = next(self._ids)
        # Lone surrogates (never valid UTF-8) become "?": the program file must be written as UTF-8.
        text = source.encode("utf-8", "replace").decode("utf-8")
        message = json.dumps({"id": job_id, "source": text}, ensure_ascii=False).encode()
        if len(message) > MAX_MESSAGE_BYTES:
            return ToolResult(f"error: the program is {len(text.encode())} bytes; the tool runs at most "
                              f"{MAX_MESSAGE_BYTES - 100}")
        try:
            worker = self._idle.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            return ToolResult(failure="tool_timeout")  # every worker busy until the deadline: nothing ran
        result, healthy = self._exchange(worker, job_id, message, deadline)
        if result is None:  # the worker had died while idle, so the program never ran: once more on a fresh one
            worker = self._replace(worker)
            result, healthy = self._exchange(worker, job_id, message, deadline) if worker is not None else (None, True)
        if not healthy:
            worker = self._replace(worker)
        if worker is not None:
            with self._lock:
                if not self._closed:
                    self._idle.put(worker)
                    return result or ToolResult(failure="tool_crash")
            worker.conn.close()  # closed meanwhile: the worker exits on the stop message it was sent
        return result or ToolResult(failure="tool_crash")

    def _exchange(self, worker: _Worker, job_id: int, message: bytes,
                  deadline: float) -> tuple[ToolResult | None, bool]:
        """Send one program and read its answer by `deadline`: (result, whether the worker may be reused); result
        None: the worker was dead before it got the program."""
        try:
            worker.conn.send_bytes(message)
        except OSError:
            return None, False
        if not worker.ready:  # a replacement: its first message says whether its sandbox was built
            failure, _ = self._read_ready(worker, deadline - time.monotonic())
            if failure:
                return ToolResult(failure=failure), False
        try:
            if not worker.conn.poll(max(deadline - time.monotonic(), 0.0)):
                return ToolResult(failure="tool_timeout"), False
            reply = json.loads(worker.conn.recv_bytes(MAX_REPLY_BYTES))
        except (EOFError, OSError, ValueError):
            return ToolResult(failure="tool_crash"), False  # the worker died (the OOM killer, a kill from outside)
        if not (isinstance(reply, dict) and reply.get("id") == job_id and isinstance(reply.get("output"), str)
                and reply.get("failure") in ("",) + FAILURES):
            return ToolResult(failure="tool_crash"), False
        return ToolResult(reply["output"], reply["failure"]), True

    def _replace(self, worker: _Worker) -> _Worker | None:
        """Kill `worker` and start another on its slot (None once closed). The replacement's readiness is read by
        the call that next checks it out, within that call's deadline. If no process can be started now, the
        dead worker stays in the pool: the call that next checks it out tries again."""
        worker.kill()
        with self._lock:
            if self._closed:
                return None
            try:
                fresh = _Worker(self._ctx, worker.slot, self._settings)
            except OSError:
                return worker
            self._workers[self._workers.index(worker)] = fresh
            return fresh

    def worker_pids(self) -> list[int]:
        """The workers' process ids (tests, monitoring)."""
        with self._lock:
            return [w.proc.pid for w in self._workers]

    def close(self) -> None:
        """Stop every worker: ask, wait up to 2 s in all, then kill. A call still running answers, or answers
        tool_crash if its worker was killed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers)
        idle = []
        while True:
            try:
                idle.append(self._idle.get_nowait())
            except queue.Empty:
                break
        for worker in workers:
            try:
                worker.conn.send_bytes(b"")
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        for worker in workers:
            worker.proc.join(timeout=max(deadline - time.monotonic(), 0.0))
            if worker.proc.is_alive():
                worker.proc.kill()
                worker.proc.join(timeout=5)
        for worker in idle:  # a busy worker's pipe is its caller's, closed by that caller
            worker.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
