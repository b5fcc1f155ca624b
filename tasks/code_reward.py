"""Rule-based code reward (Skywork-OR1 §7.1): run the model's program against the problem's tests.

The program is the last fenced ```python block after `</think>`; it must
parse (`ast.parse`) or the reward is 0. Tests come in three formats (the
`tests` dict of a problem):
* stdin/stdout:  {"inputs": [str, ...], "outputs": [str, ...]} - the program
  reads stdin; its stdout must match (whitespace around the whole output and
  at the end of each line ignored);
* function call: {"fn_name": str, "inputs": [[args...], ...], "outputs": [value, ...]}
  - calls `Solution().fn_name(*args)` when a `class Solution` exists
  (LeetCode style), else the top-level function; results compared as JSON;
* assert-style:  {"test_code": str, "import_prefix": str (optional)} - the
  program runs first; only then does the harness receive the test code, with
  a fresh random nonce, on a pipe, run it in the program's namespace and
  report the nonce. Passing means exiting 0 *and* reporting that nonce: a
  program that exits early (`sys.exit(0)`, `os._exit(0)`) or reads its
  directory finds no tests to skip or copy.
Every run is one sandboxed process (tasks/code_sandbox.py). Results come back
on a pipe, never through a file the program could replace; expected outputs
never enter the sandbox. Reward 1 only if every test passes; `fraction=True`
gives the passed share instead. Tests stop at the first failure (binary
reward) or when the total time budget is spent.
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import shutil
import sys
import time

from asyncor.tasks.code_sandbox import Limits, Sandbox
from asyncor.tasks.math_reward import solution_text

FENCE = re.compile(r"```(?:python|py|Python3|python3)?[ \t]*\n(.*?)```", re.DOTALL)

# Inside the sandbox, before the model's code: no sockets, whatever the OS allowed.
_NO_NETWORK = """
import socket as _socket
def _refuse(*_a, **_k):
    raise OSError("network access is disabled in the sandbox")
_socket.socket = _refuse
_socket.create_connection = _refuse
_socket.getaddrinfo = _refuse
del _socket
"""

# The harness keeps its own references (os.write, json.dumps, ...) taken before the program runs.
_CHANNEL = """
import json as _json, os as _os
_write, _read, _dumps, _loads = _os.write, _os.read, _json.dumps, _json.loads
_out, _in = int(_os.environ["ASYNCOR_RESULT_FD"]), int(_os.environ["ASYNCOR_FOLLOWUP_FD"])
"""

_CALL_HARNESS = _NO_NETWORK + _CHANNEL + """
namespace = {"__name__": "solution"}
exec(compile(open("solution.py").read(), "solution.py", "exec"), namespace)
spec = _loads(open("call.json").read())
if "Solution" in namespace:
    fn = getattr(namespace["Solution"](), spec["fn_name"])
else:
    fn = namespace[spec["fn_name"]]
_write(_out, _dumps(fn(*spec["args"]), default=str).encode())
"""

_ASSERT_HARNESS = _NO_NETWORK + _CHANNEL + """
namespace = {"__name__": "__main__"}
exec(compile(open("solution.py").read(), "solution.py", "exec"), namespace)
_write(_out, b"R")  # the program ran: now the tests come
_chunks = []
while True:
    _chunk = _read(_in, 65536)
    if not _chunk:
        break
    _chunks.append(_chunk)
_spec = _loads(b"".join(_chunks))
exec(compile(_spec["tests"], "tests.py", "exec"), namespace)
_write(_out, ("P" + _spec["nonce"]).encode())
"""

_SCRIPT_HARNESS = _NO_NETWORK + """
namespace = {"__name__": "__main__"}
exec(compile(open("solution.py").read(), "solution.py", "exec"), namespace)
"""


def sandbox_python() -> str:
    """An interpreter the sandbox's unprivileged uid may execute (a venv under /root is not)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("python3") or sys.executable


def extract_program(response: str) -> str | None:
    """The last fenced python block after </think>, if it parses."""
    blocks = FENCE.findall(solution_text(response))
    if not blocks:
        return None
    code = blocks[-1]
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    return code


def _same_output(actual: bytes, expected: str) -> bool:
    def norm(text: str) -> list[str]:
        return [line.rstrip() for line in text.strip().splitlines()]
    return norm(actual.decode("utf-8", errors="replace")) == norm(expected)


def _normalise(value):
    return json.loads(json.dumps(value, default=str))  # tuples -> lists, as the stored outputs are


def _cases(tests: dict, code: str) -> list[tuple[dict, str, bytes, object]]:
    """(files, harness kind, stdin, expected) per test; for assert-style tests, `expected` is the test code
    (sent to the harness after the program ran, never written into the sandbox)."""
    if "test_code" in tests:
        program = tests.get("import_prefix", "") + "\n" + code + "\n"
        return [({"solution.py": program}, "assert", b"", tests["test_code"])]
    inputs, outputs = tests.get("inputs"), tests.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise ValueError("tests need 'test_code', or 'inputs' and 'outputs' lists of equal length")
    if tests.get("fn_name"):
        return [({"solution.py": code, "call.json": json.dumps({"fn_name": tests["fn_name"], "args": args})},
                 "call", b"", expected) for args, expected in zip(inputs, outputs)]
    return [({"solution.py": code}, "script", str(stdin).encode(), expected) for stdin, expected in zip(inputs, outputs)]


def run_tests(code: str, tests: dict, sandbox: Sandbox, total_s: float, fraction: bool) -> tuple[int, int]:
    """(passed, total) for `code` on `tests`."""
    cases = _cases(tests, code)
    passed, deadline, python = 0, time.monotonic() + total_s, sandbox_python()
    for files, kind, stdin, expected in cases:
        if time.monotonic() > deadline:
            break
        harness = {"call": _CALL_HARNESS, "assert": _ASSERT_HARNESS}.get(kind, _SCRIPT_HARNESS)
        files = {**files, "harness.py": harness}
        followup = None
        if kind == "assert":
            nonce = secrets.token_hex(16)
            followup = json.dumps({"tests": expected, "nonce": nonce}).encode()
        result = sandbox.run([python, "-I", "harness.py"], files, stdin, followup=followup)
        ok = result.ok
        if ok and kind == "call":
            try:
                ok = _normalise(json.loads(result.channel or b"null")) == _normalise(expected)
            except ValueError:
                ok = False
        elif ok and kind == "assert":
            ok = result.channel == b"RP" + nonce.encode()  # the tests ran to their end in this run
        elif ok:
            ok = _same_output(result.stdout, expected)
        passed += ok
        if not ok and not fraction:
            break
    return passed, len(cases)


def code_reward(response: str, tests: dict, sandbox: Sandbox | None = None, total_s: float = 30.0,
                fraction: bool = False) -> float:
    """1.0 if the response's program passes every test (or the passed fraction), else 0.0."""
    code = extract_program(response)
    if code is None:
        return 0.0
    passed, total = run_tests(code, tests, sandbox or Sandbox(0, Limits()), total_s, fraction)
    if total == 0:
        return 0.0
    return passed / total if fraction else float(passed == total)
