"""Verifiers through the actor's pool, with real sandboxed processes: every test format, and hostile
programs that must end within their limits with reward 0 and leave the host unharmed."""

import json
import os
import time
from pathlib import Path

import pytest

from asyncor.tasks.verifier_pool import VerifierJob, PoolSettings, VerifierPool
from asyncor.tasks.code_sandbox import SANDBOX_UID_BASE, SANDBOX_UIDS, Limits

pytestmark = pytest.mark.slow
DATA = Path(__file__).resolve().parents[1] / "data"
LIMITS = Limits(wall_s=2.0, cpu_s=1, memory_bytes=512 << 20, output_bytes=1 << 16)
STDIO = {"inputs": ["1 2\n"], "outputs": ["3\n"]}


def fenced(code: str) -> str:
    return f"<think>Let me write it.</think>\n```python\n{code}\n```\n"


def live_sandbox_processes() -> list[int]:
    """Live (non-zombie) processes owned by any sandbox uid."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        uid = int(status["Uid"].split()[0])
        if SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + SANDBOX_UIDS and not status["State"].strip().startswith("Z"):
            pids.append(int(pid))
    return pids


def sandbox_processes(grace_s: float = 2.0) -> list[int]:
    """Sandbox processes still alive `grace_s` after a run: killed processes may still be exiting (a fork loop's
    namespace takes a moment to die on a loaded host); one that is still there then escaped."""
    deadline = time.monotonic() + grace_s
    while (pids := live_sandbox_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(PoolSettings(workers=2, deadline_s=8.0, code_total_s=5.0, code_limits=LIMITS)) as p:
        yield p


def test_every_test_format_correct_and_wrong(pool):
    rows = [json.loads(line) for line in (DATA / "code.jsonl").read_text().splitlines()]
    jobs = [VerifierJob("code", fenced(r[key]), r["tests"]) for r in rows for key in ("solution", "wrong_solution")]
    assert pool.score(jobs) == [1.0, 0.0] * len(rows)
    assert {r["data_source"] for r in rows} >= {"sample_code_stdio", "sample_code_leetcode", "sample_code_assert",
                                                "sample_code_function"}


def test_extraction_takes_the_last_block_after_thinking(pool):
    two_blocks = "```python\nprint(0)\n```\n" + fenced("a, b = map(int, input().split())\nprint(a + b)")
    thinking_only = "<think>```python\na, b = map(int, input().split())\nprint(a + b)\n```</think> no code"
    not_python = fenced("a, b = = map(")
    assert pool.score([VerifierJob("code", two_blocks, STDIO), VerifierJob("code", thinking_only, STDIO),
                       VerifierJob("code", not_python, STDIO)]) == [1.0, 0.0, 0.0]


def test_fraction_of_tests_passed_as_an_option():
    tests = {"inputs": ["1\n", "2\n", "3\n", "4\n"], "outputs": ["1\n", "4\n", "9\n", "15\n"]}
    with VerifierPool(PoolSettings(workers=1, code_limits=LIMITS, code_fraction=True)) as p:
        assert p.score([VerifierJob("code", fenced("n = int(input())\nprint(n * n)"), tests)]) == [0.75]


HOSTILE = {
    "infinite loop": "while True:\n    pass",
    "sleeps forever": "import time\ntime.sleep(10_000)",
    "memory bomb": "x = bytearray(8 * 1024 ** 3)\nprint(3)",
    "fork loop": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "huge output": "while True:\n    print('x' * 100_000)",
    "network attempt": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\nprint(3)",
    "raw socket via _socket": "import _socket\ns = _socket.socket()\ns.connect(('1.1.1.1', 80))\nprint(3)",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_scores_zero_within_its_limit(pool, name):
    start = time.monotonic()
    assert pool.score([VerifierJob("code", fenced(HOSTILE[name]), STDIO)]) == [0.0]
    assert time.monotonic() - start < LIMITS.wall_s + 3, name
    assert sandbox_processes() == [], name
    # The pool still works afterwards.
    assert pool.score([VerifierJob("code", fenced("a, b = map(int, input().split())\nprint(a + b)"), STDIO)]) == [1.0]


def test_writing_outside_its_directory_is_refused(pool, tmp_path):
    target = tmp_path / "escaped.txt"
    program = f"open({str(target)!r}, 'w').write('x')\nprint(3)"
    assert pool.score([VerifierJob("code", fenced(program), STDIO)]) == [0.0]
    assert not target.exists()
    home_file = Path("/root/escaped-by-sandbox")
    program = f"open({str(home_file)!r}, 'w').write('x')\nprint(3)"
    assert pool.score([VerifierJob("code", fenced(program), STDIO)]) == [0.0]
    assert not home_file.exists()


def test_a_job_past_its_deadline_is_killed_and_the_worker_replaced():
    slow = {"inputs": ["1 2\n"] * 10, "outputs": ["3\n"] * 10}
    with VerifierPool(PoolSettings(workers=1, deadline_s=1.5, code_total_s=60.0,
                                   code_limits=Limits(wall_s=5.0, cpu_s=5))) as p:
        start = time.monotonic()
        rewards = p.score([VerifierJob("code", fenced("import time\ntime.sleep(4)\nprint(3)"), slow),
                           VerifierJob("math", "\\boxed{2}", "2")])
        assert rewards == [0.0, 1.0] and p.timeouts == 1
        assert time.monotonic() - start < 10
    assert sandbox_processes() == []


def test_math_jobs_and_unknown_kinds(pool):
    assert pool.score([VerifierJob("math", "\\boxed{\\dfrac{1}{2}}", "0.5"),
                       VerifierJob("math", "\\boxed{3}", "4")]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="kind"):
        pool.score([VerifierJob("chemistry", "x", "y")])
