"""The math verifier on equivalent and non-equivalent answers, malformed and pathological inputs."""

import json
from pathlib import Path

import pytest

from asyncor.tasks.math_reward import math_reward, solution_text

DATA = Path(__file__).resolve().parents[1] / "data" / "math.jsonl"

PAIRS = [  # (response, gold, expected reward)
    ("\\boxed{\\frac{1}{2}}", "0.5", 1), ("The answer is \\boxed{0.5}", "\\frac{1}{2}", 1),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac34", 1), ("\\boxed{[1, 3)}", "[1,3)", 1), ("\\boxed{(1,3]}", "[1,3)", 0),
    ("\\boxed{\\{1,2,3\\}}", "\\{3,2,1\\}", 1), ("\\boxed{5 \\text{ cm}}", "5", 1), ("\\boxed{12\\%}", "12", 1),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1), ("\\boxed{x^2+2x+1}", "(x+1)^2", 1), ("\\boxed{1/3}", "0.333", 0),
    ("\\boxed{-3}", "3", 0), ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2", 1), ("\\boxed{90^\\circ}", "90", 1),
    ("answer: 42", "42", 1), ("\\boxed{x=3}", "3", 1), ("\\boxed{3, 5}", "5, 3", 1), ("\\boxed{\\infty}", "\\infty", 1),
    ("\\boxed{1,000}", "1000", 1), ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt2}{2}", 1), ("\\boxed{2}", "2.0", 1),
    ("\\boxed{2.01}", "2", 0), ("\\boxed{a}", "b", 0), ("\\boxed{\\text{(A)}}", "A", 1),
    # Only the text after </think> counts.
    ("<think>maybe 7</think> so \\boxed{8}", "8", 1), ("<think>\\boxed{8}</think> final \\boxed{7}", "8", 0),
    # Malformed and pathological: 0, quickly, no exception.
    ("\\boxed{\\frac{1}{0}}", "1", 0), ("\\boxed{\\frac{", "1", 0), ("", "1", 0), ("\\boxed{10^{10^{10}}}", "5", 0),
    ("\\boxed{" + "(" * 500 + "}", "1", 0), ("\x00\x01\\boxed{\ud800}", "1", 0),
    # Issue 26: an upright e (\mathrm{e}) was cut off with its closing brace, or read as a symbol, not Euler's e.
    ("\\boxed{1 - \\frac{1}{\\mathrm{e}}}", "1 - \\frac{1}{\\mathrm{e}}", 1),
    ("\\boxed{1 - e^{-1}}", "1 - \\frac{1}{\\mathrm{e}}", 1), ("\\boxed{\\mathrm{e}^{2}}", "\\mathrm{e}^{2}", 1),
    ("\\boxed{e^2}", "\\mathrm{e}^{2}", 1), ("\\boxed{{\\rm e}^{2}}", "e^{2}", 1),
    ("\\boxed{x\\mathrm{e}^{x}}", "xe^x", 1),
    ("\\boxed{\\sqrt{\\mathrm{e}}}", "\\mathrm{e}^{1/2}", 1), ("\\boxed{2\\cdot\\mathrm{e}}", "2e", 1),
    ("\\boxed{1 + \\frac{1}{\\mathrm{e}}}", "1 - \\frac{1}{\\mathrm{e}}", 0),
    ("\\boxed{\\frac{1}{\\mathrm{e}}}", "1 - \\frac{1}{\\mathrm{e}}", 0),
    ("\\boxed{1}", "1 - \\frac{1}{\\mathrm{e}}", 0),
    ("\\boxed{\\mathrm{e}^{3}}", "\\mathrm{e}^{2}", 0), ("\\boxed{2}", "\\mathrm{e}^{2}", 0),
    ("\\boxed{e}", "\\mathrm{e}^{2}", 0),
    ("\\boxed{x^{2}}", "\\mathrm{e}^{2}", 0), ("\\boxed{\\mathrm{exp}}", "\\mathrm{e}", 0),
]


@pytest.mark.parametrize("response,gold,expected", PAIRS)
def test_answer_pairs(response, gold, expected):
    assert math_reward(response, gold) == expected


def test_sample_data_equivalent_and_wrong_answers():
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    checked = 0
    for row in rows:
        for answer in row["equivalent"]:
            assert math_reward(f"<think>work</think> So {answer}.", row["answer"]) == 1.0, (answer, row["answer"])
            checked += 1
        for answer in row["wrong"]:
            assert math_reward(f"<think>work</think> So {answer}.", row["answer"]) == 0.0, (answer, row["answer"])
            checked += 1
    assert checked >= 30


def test_pathological_input_returns_within_the_timeout():
    """In a fresh process, as in the verifier pool's workers: math-verify's SIGALRM timeout raises from a
    signal handler, and in the test process an exception raised while a gc callback runs (hypothesis
    installs one) is swallowed, so the parse went on unbounded (73 s, twice in full-suite runs)."""
    import subprocess
    import sys

    code = ("import time; from asyncor.tasks.math_reward import math_reward; start = time.monotonic(); "
            "a = math_reward('\\\\boxed{' + 'x^{' * 200 + '2' + '}' * 200 + '}', '3', timeout_s=2); "
            "b = math_reward('\\\\boxed{' + '+'.join(f'x_{i}^{i}' for i in range(400)) + '}', '1', timeout_s=2); "
            "print(a, b, time.monotonic() - start)")
    root = __file__.rsplit("/tests/", 1)[0]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    a, b, seconds = out.stdout.split()[-3:]
    assert (float(a), float(b)) == (0.0, 0.0) and float(seconds) < 12, out.stdout + out.stderr[-2000:]


def test_solution_text_takes_what_follows_the_last_think():
    assert solution_text("<think>a</think>b</think>c") == "c"
    assert solution_text("no tags") == "no tags"


def test_an_answer_math_verify_cannot_read_still_matches_the_gold_string():
    """Issue 14: the exact-string match was skipped when math-verify found no expression."""
    from asyncor.tasks.math_reward import math_reward

    assert math_reward("so the answer is \\boxed{@#}", "@#") == 1.0
    assert math_reward("so the answer is \\boxed{@#}", "#@") == 0.0
    assert math_reward("no answer at all", "@#") == 0.0


def test_a_gold_with_a_decimal_comma_is_a_number_not_a_set():
    """Issue 14: boxing the gold "0,5" made it the set {0, 5}, so the right answer 0.5 scored 0."""
    from asyncor.tasks.math_reward import math_reward

    assert math_reward("\\boxed{0.5}", "0,5") == 1.0
    assert math_reward("\\boxed{\\frac{1}{2}}", "0,5") == 1.0
    assert math_reward("\\boxed{0,5}", "0,5") == 1.0
    assert math_reward("\\boxed{0.6}", "0,5") == 0.0
    assert math_reward("\\boxed{1000}", "1,000") == 1.0  # a thousands separator stays one
