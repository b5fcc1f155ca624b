"""The python tool (tasks/python_tool.py) with real worker processes and sandbox runs, jailed where the jail is
available (root, namespaces: CI) and always without it (the plain fallback): what a program prints comes back, a
Python error is feedback, a hang / flood / garbage / dead worker ends with its reason within the deadline, and
the pool recovers. The mapping of a sandbox result to an answer is also checked on hand-made results."""

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from asyncor.tasks.code_sandbox import SANDBOX_UID_BASE, SANDBOX_UIDS, Limits, RunResult, jail_available
from asyncor.tasks.python_tool import MAX_MESSAGE_BYTES, TRACEBACK_LINES, PythonTool, answer
from asyncor.tasks.tool_env import ToolResult

WALL_S = 1.5  # a sandbox run: python starts in well under it even on a loaded 2-core machine
DEADLINE_S = 6.0
SINGLE_DEADLINE_S = 3.0  # room for a replacement worker's start on a loaded machine
SHORT_DEADLINE_S = 0.6
LIMITS = Limits(wall_s=WALL_S, cpu_s=2, memory_bytes=512 << 20, output_bytes=1 << 16)
SLACK_S = 1.5  # a loaded 2-core machine: the sandbox's kill, the reply, a replacement's start
MODES = [pytest.param(None, id="jail", marks=pytest.mark.skipif(not jail_available(), reason="no jail here "
                                                                "(needs root, unshare and namespaces)")),
         pytest.param(False, id="plain")]


@pytest.fixture(scope="module", params=MODES)
def jail(request):
    return request.param


@pytest.fixture(scope="module")
def tool(jail):
    with PythonTool(workers=4, deadline_s=DEADLINE_S, limits=LIMITS, jail=jail) as t:
        yield t


@pytest.fixture(scope="module")
def single(jail):
    """One worker whose sandbox clock is longer than the call's deadline: only the pool's own deadline (or a
    dead worker) stops a run, and the worker must be replaced (each test starts from the worker left by the
    one before)."""
    with PythonTool(workers=1, deadline_s=SINGLE_DEADLINE_S, limits=Limits(wall_s=30.0, cpu_s=30), jail=jail) as t:
        yield t


def timed(tool: PythonTool, source: str) -> tuple[ToolResult, float]:
    start = time.monotonic()
    result = tool.run(source)
    return result, time.monotonic() - start


def test_what_the_program_prints_comes_back(tool):
    assert tool.run("print(6 * 7)\nprint('ok\\tdone')") == ToolResult("42\nok\tdone\n")
    assert tool.run("x = 1") == ToolResult("")
    assert tool.run("print('\\u00e9t\\u00e9')") == ToolResult("\u00e9t\u00e9\n")  # UTF-8 text is text


def test_an_exception_is_output_with_its_traceback(tool):
    result = tool.run("print('before')\n1 / 0\n")
    assert not result.failure
    assert result.output.startswith("before\nTraceback (most recent call last):")
    assert result.output.endswith("ZeroDivisionError: division by zero")
    result = tool.run("def f(n):\n    return f(n + 1)\nf(0)\n")
    assert not result.failure and result.output.endswith("maximum recursion depth exceeded")
    assert len(result.output.splitlines()) <= TRACEBACK_LINES
    assert tool.run("print(1 +)").output.endswith("SyntaxError: invalid syntax")


def test_an_exit_status_and_a_signal_are_output(tool):
    assert tool.run("import sys; print(1); sys.exit(3)") == ToolResult("1\nexit status 3")
    assert tool.run("import sys; sys.exit('bad input')") == ToolResult("bad input")
    # The model's program dying is its own business: feedback, not a tool failure.
    assert tool.run("import ctypes; ctypes.string_at(0)") == ToolResult("killed by signal 11 (SIGSEGV)")


def test_long_output_is_cut(tool):
    assert tool.run("print('y' * 10000)") == ToolResult("y" * 4096)


def test_a_hang_is_a_timeout_and_the_worker_is_kept(tool):
    pids = tool.worker_pids()
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda source: timed(tool, source), ["while True: pass",
                                                                     "import time; time.sleep(100)"]))
    for result, took in answers:
        assert result == ToolResult(failure="tool_timeout")
        assert WALL_S <= took < WALL_S + SLACK_S
    assert tool.run("print('next')") == ToolResult("next\n")
    assert tool.worker_pids() == pids  # the sandbox stopped it: no worker was lost


def test_a_hang_past_the_deadline_replaces_the_worker(single, monkeypatch):
    [pid] = single.worker_pids()
    monkeypatch.setattr(single, "deadline_s", SHORT_DEADLINE_S)  # read by each call
    result, took = timed(single, "import time; time.sleep(100)")
    monkeypatch.undo()
    assert result == ToolResult(failure="tool_timeout")
    assert SHORT_DEADLINE_S <= took < SHORT_DEADLINE_S + SLACK_S
    assert single.worker_pids() != [pid]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert single.run("print('next')") == ToolResult("next\n")


def test_a_dead_worker_is_a_crash_and_is_replaced(single):
    [pid] = single.worker_pids()
    killer = threading.Timer(0.2, os.kill, (pid, signal.SIGKILL))
    killer.start()
    result, took = timed(single, "import time; time.sleep(100)")
    killer.join()
    assert result == ToolResult(failure="tool_crash")
    assert took < 1.0 < SINGLE_DEADLINE_S  # at once, not at the deadline
    assert single.worker_pids() != [pid]
    assert single.run("print('next')") == ToolResult("next\n")


def test_a_worker_dead_while_idle_costs_no_call(single):
    [pid] = single.worker_pids()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    assert single.run("print('still')") == ToolResult("still\n")  # sent once more, to its replacement
    assert single.worker_pids() != [pid]


def test_a_flood_is_tool_flood(tool):
    result, took = timed(tool, "print('x' * 10**8)")
    assert result == ToolResult(failure="tool_flood") and took < WALL_S + SLACK_S
    assert tool.run("import sys; sys.stderr.write('e' * 10**6)") == ToolResult(failure="tool_flood")
    assert tool.run("while True: print('x' * 1000)") == ToolResult(failure="tool_flood")


@pytest.mark.parametrize("source", ["import sys; sys.stdout.buffer.write(b'\\xff\\xfe')",
                                    "print('\\x1b[2J')", "print('a\\x00b')", "print('\\x7f')",
                                    "import sys; sys.stderr.buffer.write(b'\\xff'); sys.exit(1)"])
def test_garbage_is_tool_garbage(tool, source):
    assert tool.run(source) == ToolResult(failure="tool_garbage")


def test_stderr_of_a_successful_run_is_not_read(tool):
    assert tool.run("import sys; sys.stderr.buffer.write(b'\\xff'); print('fine')") == ToolResult("fine\n")


def test_concurrent_calls_get_their_own_answers(tool):
    def call(i: int) -> ToolResult:
        return tool.run(f"import time\ntime.sleep(0.1)\nprint({i} * {i})")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(call, range(12)))
    assert results == [ToolResult(f"{i * i}\n") for i in range(12)]


def test_calls_past_the_pool_wait_within_the_deadline():
    with (PythonTool(workers=1, deadline_s=0.6, limits=Limits(wall_s=0.4, cpu_s=1), jail=False) as t,
          ThreadPoolExecutor(max_workers=3) as pool):
        futures = [pool.submit(timed, t, "import time; time.sleep(10)") for _ in range(3)]
        answers = [f.result() for f in futures]
    # One worker, three hangs of 0.4 s each within 0.6 s deadlines: the last cannot check a worker out in time.
    assert all(result == ToolResult(failure="tool_timeout") for result, _ in answers)
    assert all(took < 0.6 + SLACK_S for _, took in answers)


@pytest.mark.skipif(not jail_available(), reason="no jail here")
def test_jailed_workers_run_under_their_own_sandbox_uids(tool, jail):
    if jail is False:
        pytest.skip("the plain fallback keeps the worker's uid")
    with ThreadPoolExecutor(max_workers=4) as pool:
        outputs = list(pool.map(tool.run, ["import os, time; time.sleep(0.3); print(os.getuid())"] * 4))
    uids = {int(r.output) for r in outputs}
    assert len(uids) == 4
    assert all(SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + SANDBOX_UIDS for uid in uids)
    assert tool.run("import socket; socket.create_connection(('1.1.1.1', 53), timeout=0.2)").output.endswith(
        "OSError: [Errno 101] Network is unreachable")


def test_an_oversized_program_is_answered_with_an_error(tool):
    result = tool.run("#" * MAX_MESSAGE_BYTES)
    assert not result.failure and result.output.startswith("error: the program is")
    assert tool.run("print(len('\ud800'))") == ToolResult("1\n")  # a lone surrogate is replaced, not a crash


def test_a_closed_tool_answers_crash():
    t = PythonTool(workers=1, deadline_s=2.0, limits=LIMITS, jail=False)
    [pid] = t.worker_pids()
    t.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert t.run("print(1)") == ToolResult(failure="tool_crash")
    t.close()  # twice is fine


def test_from_config_fits_the_sandbox_clock_under_the_step_deadline():
    from asyncor.configs.loader import load_config
    from asyncor.tasks.environments import make_tool

    config = load_config(None, ['task.env.kind="tool"', 'task.env.tool="python"', "task.env.step_timeout_s=5",
                                "task.env.workers=1"])
    with make_tool(config) as t:
        assert isinstance(t, PythonTool) and len(t.worker_pids()) == 1
        assert t.deadline_s == pytest.approx(4.0) and t.deadline_s < 5
        assert t.limits.wall_s == pytest.approx(3.0) and t.limits.cpu_s == 3
        assert t.limits.memory_bytes == Limits().memory_bytes  # otherwise the verifiers' limits
        assert t.run("print(2 ** 10)") == ToolResult("1024\n")
    config = load_config(None, ['task.env.kind="tool"', 'task.env.tool="python"'])
    assert Limits().wall_s < config.task.env.step_timeout_s
    config = load_config(None, ['task.env.kind="tool"', 'task.env.tool="python"', "task.env.step_timeout_s=1"])
    with pytest.raises(ValueError, match="task.env.step_timeout_s = 1.0 is too short"):
        PythonTool.from_config(config)


def run_result(stdout=b"", stderr=b"", returncode=0, timed_out=False, exceeded=False) -> RunResult:
    return RunResult(returncode, stdout, stderr, timed_out, exceeded)


@pytest.mark.parametrize("result,expected", [
    (run_result(b"hi\n"), ("hi\n", "")),
    (run_result(b"hi\n", b"warning\n"), ("hi\n", "")),
    (run_result(returncode=None, timed_out=True), ("", "tool_timeout")),
    (run_result(returncode=-signal.SIGXCPU), ("", "tool_timeout")),  # out of CPU time: a hang
    (run_result(b"x" * 10, exceeded=True), ("", "tool_flood")),
    (run_result(b"x" * 1001), ("", "tool_flood")),
    (run_result(b"\xc3"), ("", "tool_garbage")),
    (run_result(b"a\rb\r\n"), ("a\nb\n", "")),  # carriage returns read as line ends
    (run_result(b"a\x1bb"), ("", "tool_garbage")),
    (run_result(b"out", b"Traceback\nValueError: v\n", 1), ("out\nTraceback\nValueError: v", "")),
    (run_result(b"", b"", -signal.SIGKILL), ("killed by signal 9 (SIGKILL)", "")),
    (run_result(b"", b"", -77), ("killed by signal 77 (unknown)", "")),
    (run_result(b"", b"", 2), ("exit status 2", "")),
    (run_result(b"1\n", b"\n".join(b"line %d" % i for i in range(50)), 1),
     ("1\n" + "\n".join(f"line {i}" for i in range(50 - TRACEBACK_LINES, 50)), "")),
])
def test_answer_maps_a_sandbox_result(result, expected):
    assert answer(result, Limits(output_bytes=1000), 4096) == expected


def test_answer_keeps_the_traceback_when_the_output_is_cut():
    output, failure = answer(run_result(b"y" * 5000, b"Traceback\nKeyError: 'k'\n", 1), Limits(), 100)
    assert not failure and len(output) <= 100
    assert output.startswith("y") and output.endswith("Traceback\nKeyError: 'k'")
