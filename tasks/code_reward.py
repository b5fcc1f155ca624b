"""Rule-based code reward (Skywork-OR1 §7.1): run the model's program against the problem's tests.

The program is the last fenced ```python block after `</think>`; it must
parse (`ast.parse`) or the reward is 0. Tests come in three formats (the
`tests` dict of a problem):
* stdin/stdout:  {"inputs": [str, ...], "outputs": [str, ...]} - the program
  reads stdin; its stdout must match (whitespace around the whole output and
  at the end of each line ignored);
* function call: {"fn_name": str, "inputs": [[args...], ...], "outputs": [value, ...]}
  - calls `Solution().fn_name(*args)` when a `class Solution` exists
  (LeetCode style), else the top-level function; the returned value comes back
  as JSON and is compared here;
* assert-style:  {"test_code": str, "import_prefix": str (optional)} - split
  here, judged here (`plan_asserts`): each top-level `assert` becomes the
  expressions the program must compute (`f(x)` of `assert f(x) == 5`) and a
  check kept here (`== 5`). The program runs first; only then does the harness
  receive the expressions (and the test code's other statements) on a pipe,
  evaluate them in the program's namespace and send their values back as typed
  JSON (`encode` inside, `decode_value` here). The literal side of a comparison
  and whether a bare `assert E` wants E true or false (`assert not E`) never
  enter the sandbox, so neither a program that hijacks the harness (patches
  `exec`, reads the pipe itself, writes the result descriptor) nor an object
  whose `__eq__` is always true can pass them. What is still judged inside:
  asserts not at the top level (in a function, a loop) and the other statements
  of the test code, which must only run without raising (docs/verifiers.md).
Every run is one sandboxed process (tasks/code_sandbox.py). Results come back
on a pipe, never through a file the program could replace; expected outputs
never enter the sandbox. Reward 1 only if every test passes; `fraction=True`
gives the passed share instead. Tests stop at the first failure (binary
reward) or when the total time budget is spent.
"""

from __future__ import annotations

import ast
import json
import operator
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

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

# The harness keeps its own references (os.write, json.dumps, exec, ...) taken before the program runs. They
# make an honest run immune to a program's stray patches; they are no defence against a hostile one, which
# shares the interpreter: that is why verdicts are reached outside, from values.
_CHANNEL = """
import json as _json, os as _os
_write, _read, _dumps, _loads = _os.write, _os.read, _json.dumps, _json.loads
_exec, _eval, _compile, _open, _type, _isinstance, _bool = exec, eval, compile, open, type, isinstance, bool
_out, _in = int(_os.environ["ASYNCOR_RESULT_FD"]), int(_os.environ["ASYNCOR_FOLLOWUP_FD"])
def _send(data):
    while data:
        data = data[_write(_out, data):]
"""

_CALL_HARNESS = _NO_NETWORK + _CHANNEL + """
namespace = {"__name__": "solution"}
_exec(_compile(_open("solution.py").read(), "solution.py", "exec"), namespace)
spec = _loads(_open("call.json").read())
if "Solution" in namespace:
    fn = getattr(namespace["Solution"](), spec["fn_name"])
else:
    fn = namespace[spec["fn_name"]]
_send(_dumps(fn(*spec["args"]), default=str).encode())
"""

# A value as typed JSON (decode_value reads it back): JSON's own types as they are; tuples, sets, dicts (any
# keys), bytes, complex, big ints, Fraction and Decimal tagged; anything else is {"t": "other"}, with its type
# name and truth, and equals no literal.
_ENCODE = """
_PLAIN = (int, float, str, list, tuple, dict, set, frozenset, bytes, complex)
def _encode(v, depth=0):
    t = _type(v)
    if depth > 100:
        return {"t": "other", "type": "nested too deep", "truth": True}
    if v is None or t is bool or t is str or t is float:
        return v
    if t is int:
        return v if -(1 << 53) < v < (1 << 53) else {"t": "int", "v": hex(v)}
    if t is list:
        return [_encode(x, depth + 1) for x in v]
    if t is tuple or t is set or t is frozenset:
        return {"t": t.__name__, "v": [_encode(x, depth + 1) for x in v]}
    if t is dict:
        return {"t": "dict", "v": [[_encode(k, depth + 1), _encode(x, depth + 1)] for k, x in v.items()]}
    if t is bytes:
        return {"t": "bytes", "v": v.hex()}
    if t is complex:
        return {"t": "complex", "v": [v.real, v.imag]}
    if (t.__module__, t.__name__) == ("fractions", "Fraction"):
        return {"t": "fraction", "v": [hex(v.numerator), hex(v.denominator)]}
    if (t.__module__, t.__name__) == ("decimal", "Decimal"):
        return {"t": "decimal", "v": str(v)}
    for base in _PLAIN:  # a subclass (IntEnum, namedtuple, Counter, ...) as its plain base value
        if _isinstance(v, base):
            return _encode(base(v), depth + 1)
    return {"t": "other", "type": t.__qualname__[:100], "truth": _bool(v)}
"""

_ASSERT_HARNESS = _NO_NETWORK + _CHANNEL + _ENCODE + """
namespace = {"__name__": "__main__"}
_exec(_compile(_open("solution.py").read(), "solution.py", "exec"), namespace)
_send(b"R")  # the program ran: now the tests come
_chunks = []
while True:
    _chunk = _read(_in, 65536)
    if not _chunk:
        break
    _chunks.append(_chunk)
_results = []
for _step in _loads(b"".join(_chunks)):
    try:
        if "exec" in _step:
            _exec(_compile(_step["exec"], "tests.py", "exec"), namespace)
            _results.append({"done": True})
        else:
            _results.append({"v": _encode(_eval(_compile(_step["probe"], "tests.py", "eval"), namespace))})
    except BaseException as _error:  # the test failed: nothing after it is needed
        _results.append({"raised": _type(_error).__name__})
        break
_send(_dumps(_results).encode())
"""

_SCRIPT_HARNESS = _NO_NETWORK + """
namespace = {"__name__": "__main__"}
exec(compile(open("solution.py").read(), "solution.py", "exec"), namespace)
"""


class Opaque:
    """A value of a type the harness does not carry (a class instance, a numpy array, ...): equal to nothing
    but itself, ordered with nothing, true or false as the sandbox reported."""

    def __init__(self, type_name: str, truth: bool):
        self.type_name, self.truth = type_name, truth

    def __bool__(self) -> bool:
        return self.truth

    def __repr__(self) -> str:
        return f"Opaque({self.type_name})"


def decode_value(obj, depth: int = 0):
    """A value the jailed harness encoded (`_ENCODE`) as plain Python data. Untrusted: anything malformed raises
    ValueError, TypeError or RecursionError (the test then fails)."""
    if depth > 200:
        raise ValueError("value nested too deep")
    if obj is None or isinstance(obj, (bool, str, int, float)):
        return obj
    if isinstance(obj, list):
        return [decode_value(x, depth + 1) for x in obj]
    if not isinstance(obj, dict):
        raise TypeError(f"not an encoded value: {type(obj).__name__}")
    tag, v = obj.get("t"), obj.get("v")
    if tag == "other":
        return Opaque(str(obj.get("type"))[:100], obj.get("truth") is True)
    shapes = {"int": str, "bytes": str, "decimal": str, "tuple": list, "set": list, "frozenset": list, "dict": list,
              "complex": list, "fraction": list}
    if tag not in shapes or not isinstance(v, shapes[tag]):
        raise ValueError(f"not an encoded value: tag {tag!r} with {type(v).__name__}")
    if tag == "int":
        return int(v, 16)
    if tag == "bytes":
        return bytes.fromhex(v)
    if tag == "decimal":
        return Decimal(v)
    items = [decode_value(x, depth + 1) for x in v]
    if tag in ("complex", "fraction"):
        real, imag = items  # two numbers: ValueError otherwise
        return complex(float(real), float(imag)) if tag == "complex" else Fraction(int(real, 16), int(imag, 16))
    if tag == "dict":
        return {key: value for key, value in items}
    return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)


COMPARISONS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
               ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
               ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not}
SINGLETONS = (None, True, False)  # the only literals `is` can be judged against outside the sandbox


@dataclass(frozen=True)
class Probe:
    """Operand computed in the sandbox: the value of step `step`."""
    step: int


@dataclass(frozen=True)
class Literal:
    """Operand kept in the worker: a literal of the test code (never sent to the sandbox)."""
    value: object


@dataclass(frozen=True)
class Comparison:
    """`operands[0] ops[0] operands[1] ops[1] operands[2] ...`, Python's chained comparison."""
    operands: tuple
    ops: tuple


@dataclass(frozen=True)
class Truth:
    """The value of step `step` must be true (`assert E`) or false (`assert not E`)."""
    step: int
    expected: bool


@dataclass
class AssertPlan:
    """Assert-style test code, split. `steps` go to the sandbox in order: {"exec": statement} runs a statement,
    {"probe": expression} sends back the expression's value. `checks` stay here and judge those values.
    `inside` counts the assert statements the sandbox judges itself (inside an exec step): the remaining limit."""
    steps: list[dict] = field(default_factory=list)
    checks: list = field(default_factory=list)
    inside: int = 0

    def probe(self, node: ast.expr) -> Probe:
        self.steps.append({"probe": ast.unparse(node)})
        return Probe(len(self.steps) - 1)

    def passes(self, channel: bytes) -> bool:
        """Whether the sandbox's reply (b"R" + JSON, one entry per step) passes every check."""
        try:
            if not channel.startswith(b"R"):
                return False
            results = json.loads(channel[1:])
            if not isinstance(results, list) or len(results) != len(self.steps):
                return False
            values = {}
            for i, (step, result) in enumerate(zip(self.steps, results)):
                if not isinstance(result, dict) or "raised" in result:
                    return False
                if "exec" in step:
                    if result.get("done") is not True:
                        return False
                elif "v" in result:
                    values[i] = decode_value(result["v"])
                else:
                    return False
            return all(_check(check, values) for check in self.checks)
        except (ValueError, TypeError, RecursionError, ArithmeticError):
            return False


def _check(check, values: dict):
    """One check on decoded values; raises TypeError where Python would (e.g. ordering unlike types)."""
    if isinstance(check, Truth):
        return bool(values[check.step]) == check.expected
    operands = [values[o.step] if isinstance(o, Probe) else o.value for o in check.operands]
    return all(COMPARISONS[type(op)](left, right)
               for op, left, right in zip(check.ops, operands, operands[1:]))


def _literal(node: ast.expr) -> tuple[bool, object]:
    """(True, value) if `node` is a literal (ast.literal_eval), else (False, None)."""
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _comparison(node: ast.Compare, plan: AssertPlan) -> Comparison | None:
    """`node` as a Comparison whose non-literal operands are probes; None where it cannot be judged outside
    (`is` against anything but None, True or False)."""
    operands = [node.left] + node.comparators
    literals = [_literal(o) for o in operands]
    for op, (left, right) in zip(node.ops, zip(literals, literals[1:])):
        if isinstance(op, (ast.Is, ast.IsNot)) and not any(
                is_lit and any(value is s for s in SINGLETONS) for is_lit, value in (left, right)):
            return None
    return Comparison(tuple(Literal(value) if is_lit else plan.probe(o)
                            for o, (is_lit, value) in zip(operands, literals)), tuple(node.ops))


def _split(test: ast.expr, plan: AssertPlan) -> None:
    """Add the probes and checks of `assert test`."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        for value in test.values:
            _split(value, plan)
    elif isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        plan.checks.append(Truth(plan.probe(test.operand).step, False))
    elif isinstance(test, ast.Compare) and (check := _comparison(test, plan)) is not None:
        plan.checks.append(check)
    else:
        plan.checks.append(Truth(plan.probe(test).step, True))


def plan_asserts(test_code: str) -> AssertPlan:
    """Split assert-style test code (see the module docstring). Raises ValueError if it does not parse."""
    try:
        tree = ast.parse(test_code)
    except (SyntaxError, ValueError) as exc:
        raise ValueError(f"tests: 'test_code' does not parse: {exc}") from exc
    plan = AssertPlan()
    for statement in tree.body:
        if isinstance(statement, ast.Assert):
            _split(statement.test, plan)
        else:
            plan.steps.append({"exec": ast.unparse(statement)})
            plan.inside += sum(isinstance(node, ast.Assert) for node in ast.walk(statement))
    return plan


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
    """(files, harness kind, stdin, expected) per test; for assert-style tests, `expected` is the AssertPlan
    (its steps are sent to the harness after the program ran, its checks never leave the worker)."""
    if "test_code" in tests:
        program = tests.get("import_prefix", "") + "\n" + code + "\n"
        return [({"solution.py": program}, "assert", b"", plan_asserts(tests["test_code"]))]
    inputs, outputs = tests.get("inputs"), tests.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise ValueError("tests need 'test_code', or 'inputs' and 'outputs' lists of equal length")
    if tests.get("fn_name"):
        return [({"solution.py": code, "call.json": json.dumps({"fn_name": tests["fn_name"], "args": args})},
                 "call", b"", expected) for args, expected in zip(inputs, outputs)]
    return [({"solution.py": code}, "script", str(stdin).encode(), expected)
            for stdin, expected in zip(inputs, outputs)]


def run_tests(code: str, tests: dict, sandbox: Sandbox, total_s: float, fraction: bool) -> tuple[int, int]:
    """(passed, total) for `code` on `tests`."""
    cases = _cases(tests, code)
    passed, deadline, python = 0, time.monotonic() + total_s, sandbox_python()
    for files, kind, stdin, expected in cases:
        if time.monotonic() > deadline:
            break
        harness = {"call": _CALL_HARNESS, "assert": _ASSERT_HARNESS}.get(kind, _SCRIPT_HARNESS)
        files = {**files, "harness.py": harness}
        followup = json.dumps(expected.steps).encode() if kind == "assert" else None
        result = sandbox.run([python, "-I", "harness.py"], files, stdin, followup=followup)
        ok = result.ok
        if ok and kind == "call":
            try:
                ok = _normalise(json.loads(result.channel or b"null")) == _normalise(expected)
            except ValueError:
                ok = False
        elif ok and kind == "assert":
            ok = expected.passes(result.channel)
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
