"""Assert-style tests split in the worker (tasks/code_reward.py `plan_asserts`): what the sandbox receives, and
how the worker judges the values it sends back (issue 26 item 16). The sandbox's side is played here by the
harness's own encoder (`_ENCODE`) in this process; tests/integration/test_sandbox_classes.py runs it jailed."""

import enum
import json
from collections import Counter, namedtuple
from decimal import Decimal
from fractions import Fraction

import pytest

from asyncor.tasks.code_reward import _ENCODE, AssertPlan, decode_value, plan_asserts

ENCODER = {"_type": type, "_isinstance": isinstance, "_bool": bool}
exec(_ENCODE, ENCODER)


def reply(plan: AssertPlan, namespace: dict) -> bytes:
    """What the jailed harness sends back for `plan` when the program defined `namespace`."""
    results = []
    for step in plan.steps:
        try:
            if "exec" in step:
                exec(step["exec"], namespace)
                results.append({"done": True})
            else:
                results.append({"v": ENCODER["_encode"](eval(step["probe"], namespace))})
        except Exception as error:  # noqa: BLE001 - as the harness: the test failed here
            results.append({"raised": type(error).__name__})
            break
    return b"R" + json.dumps(results).encode()


def passes(test_code: str, **program) -> bool:
    plan = plan_asserts(test_code)
    return plan.passes(reply(plan, dict(program)))


def test_expected_values_and_polarity_stay_in_the_worker():
    plan = plan_asserts("assert add(2, 3) == 5\nassert 0 == add(-1, 1)\nassert ok('abba')\nassert not ok('abc')")
    assert plan.steps == [{"probe": "add(2, 3)"}, {"probe": "add(-1, 1)"}, {"probe": "ok('abba')"},
                          {"probe": "ok('abc')"}]
    assert plan.inside == 0


def test_right_values_pass_and_wrong_ones_fail():
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
    assert passes(tests, add=lambda a, b: a + b)
    assert not passes(tests, add=lambda a, b: a - b)
    palindromes = "assert ok('abba')\nassert not ok('abc')\nassert ok('')"
    assert passes(palindromes, ok=lambda s: s == s[::-1])
    assert not passes(palindromes, ok=lambda s: True)
    assert not passes(palindromes, ok=lambda s: False)


def test_an_object_equal_to_everything_equals_no_literal():
    class Yes:
        def __eq__(self, other):
            return True
        __hash__ = None

    assert not passes("assert add(2, 3) == 5", add=lambda a, b: Yes())
    assert not passes("assert add(2, 3) in (5, 6)", add=lambda a, b: Yes())
    assert passes("assert make() is not None\nassert make()", make=Yes)  # truth as the sandbox reports it


class Colour(enum.IntEnum):
    RED = 2


@pytest.mark.parametrize("test_code,value,expected", [
    ("assert f() == (1, 2)", (1, 2), True), ("assert f() == (1, 2)", [1, 2], False),
    ("assert f() == (1, 2)", namedtuple("P", "x y")(1, 2), True), ("assert f() == [1, 2]", (1, 2), False),
    ("assert f() == {1: 'a', (2, 3): [4]}", {1: "a", (2, 3): [4]}, True), ("assert f() == {'a': 1}", {"a": 2}, False),
    ("assert f() == {3, 1}", {1, 3}, True), ("assert f() == frozenset({1})", frozenset({1}), True),
    ("assert f() == b'ab'", b"ab", True), ("assert f() == 'ab'", b"ab", False),
    ("assert f() == 2 ** 100", 2 ** 100, True), ("assert f() == 1267650600228229401496703205376", 2 ** 100, True),
    ("assert f() == -(2 ** 70)", -(2 ** 70), True), ("assert f() == 0.5", Fraction(1, 2), True),
    ("assert f() == 0.1", Decimal("0.1"), False), ("assert f() == 2", Colour.RED, True),
    ("assert f() == {'a': 2}", Counter(a=2), True), ("assert f() == 1j", 1j, True),
    ("assert f() == 1", True, True), ("assert f() == 1.0", 1, True), ("assert f() is None", None, True),
    ("assert f() is None", 0, False), ("assert f() is not True", 1, True), ("assert 0 <= f() < 10", 9, True),
    ("assert 0 <= f() < 10", 10, False), ("assert 3 in f()", [1, 3], True), ("assert f() not in 'abc'", "d", True),
    ("assert f() < 'b'", 1, False), ("assert f() == 2 and f() != 3", 2, True), ("assert f()", [], False),
    ("assert not f()", Fraction(0), True), ("assert f() == [[[]]]", [[[]]], True),
])
def test_values_compare_as_python_data(test_code, value, expected):
    """The worker's verdict is Python's own on plain data (tuple is not list, 1 == 1.0 == True, ...).
    `2 ** 100` is no literal: both sides are computed in the sandbox and compared here."""
    try:
        exec(test_code, {"f": lambda: value})
        python = True
    except (AssertionError, TypeError):
        python = False
    assert passes(test_code, f=lambda: value) == expected == python


def test_what_cannot_be_split_is_judged_in_the_sandbox():
    plan = plan_asserts("assert f() is g()")  # identity is only known inside
    assert plan.steps == [{"probe": "f() is g()"}]
    nested = plan_asserts("def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(2) == 3\n"
                          "check(f)\nfor x in (1, 2):\n    assert f(x) > 0\nassert f(1) == 2")
    assert [list(step) for step in nested.steps] == [["exec"], ["exec"], ["exec"], ["probe"]] and nested.inside == 3
    assert passes("def check(candidate):\n    assert candidate(1) == 2\ncheck(f)", f=lambda x: x + 1)
    assert not passes("def check(candidate):\n    assert candidate(1) == 2\ncheck(f)", f=lambda x: x)
    with pytest.raises(ValueError, match="test_code"):
        plan_asserts("assert (")


@pytest.mark.parametrize("channel", [
    b"", b"R", b"RP0123", b"R[]", b'R[{"v": 5}]', b'R[{"v": 5}, {"v": 0}, {"v": 1}]', b'R[{"raised": "X"}, {"v": 0}]',
    b'R[{"v": {"t": "nope"}}, {"v": 0}]', b'R[{"v": {"t": "int", "v": 5}}, {"v": 0}]', b"R[5, 0]",
    b'R[{"v": {"t": "tuple", "v": 3}}, {"v": 0}]', b'R[{"v": {"t": "dict", "v": [[[1], 2]]}}, {"v": 0}]',
    b'R[{"v": {"t": "fraction", "v": ["0x1", "0x0"]}}, {"v": 0}]', b'R[{"v": {"t": "decimal", "v": "sNaN"}}, {"v": 0}]',
    b"R[{\"v\": " + b"[" * 100000 + b"]" * 100000 + b"}, {\"v\": 0}]", b"R[{\"v\": 1" + b"0" * 5000 + b"}, {\"v\": 0}]",
    b'\xff\xfe', b'R[{"done": true}, {"v": 0}]',
])
def test_a_malformed_reply_fails_and_never_raises(channel):
    plan = plan_asserts("assert add(2, 3) == 5\nassert add(-1, 1) == 0")
    assert plan.passes(channel) is False
    assert plan.passes(b'R[{"v": 5}, {"v": 0}]') is True


def test_a_step_that_raises_fails_the_test():
    assert not passes("assert f(0) == 1\nassert f(1) == 1", f=lambda x: 1 // x)
    assert not passes("import nothing_by_this_name\nassert f(1) == 1", f=lambda x: x)


def test_decode_value_refuses_what_the_encoder_never_writes():
    assert decode_value({"t": "tuple", "v": [1, {"t": "set", "v": [2]}]}) == (1, {2})
    for bad in ({"t": "set", "v": [[1]]}, {"t": "complex", "v": "12"}, {"v": 1}, {"t": "bytes", "v": "zz"},
                {"t": "fraction", "v": [1, 2]}, {"t": "dict", "v": [[1, 2, 3]]}, b"bytes"):
        with pytest.raises((ValueError, TypeError)):
            decode_value(bad)
