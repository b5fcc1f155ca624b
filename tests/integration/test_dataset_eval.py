"""`launch.py eval` with real vLLM and the verifier pool, on the tiny warm-started policy."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data")
CACHE = os.path.join(ROOT, ".cache", "asyncor-tests")  # shared with the pipeline tests
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def policy():
    """The tiny model after its supervised warm start (built once, cached)."""
    code = ("from asyncor.configs.loader import load_config; from asyncor.prepare.warm_start import prepare_policy; "
            f"print(prepare_policy(load_config(None, ['run.cache_dir={CACHE}'])))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def run_eval(*args, timeout=300, command="eval"):
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), command, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_eval_on_the_sample_data_reports_every_source(policy, tmp_path):
    out = tmp_path / "eval"
    proc = run_eval("--model", policy, "--data", os.path.join(DATA, "math.jsonl"), os.path.join(DATA, "code.jsonl"),
                    "--k", "2", "--max-tokens", "16", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    assert summary["overall"]["n"] == len(records) > 0
    assert set(summary["by_source"]) <= {"sample_math", "sample_code_stdio", "sample_code_leetcode",
                                         "sample_code_function", "sample_code_assert"}
    assert all(len(r["rewards"]) == 2 and len(r["finish_reasons"]) == 2 for r in records)
    assert "avg@2" in proc.stdout and "pass@2" in proc.stdout
    # Progress came from inside vLLM's one generate call (actors/engine.py counting_bar): every sample counted.
    final = [line for line in (proc.stdout + proc.stderr).splitlines() if " progress " in line and "final=True" in line
             and "what=sampling" in line]
    total = 2 * len(records)
    assert final and f"done={total} " in final[-1] and f"total={total} " in final[-1], final


def arithmetic_file(tmp_path, n=48):
    """Held-out arithmetic as a plain {prompt, answer} file: problems the warm-started policy partly solves."""
    code = ("import json; from asyncor.configs.schema import TaskConfig; from asyncor.tasks.arithmetic import make_splits; "
            "_, held = make_splits(TaskConfig(), 0); "
            "print('\\n'.join(json.dumps({'prompt': p.prompt, 'answer': p.answer, 'data_source': 'add2'}) "
            f"for p in held[:{n}]))")
    rows = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    data = tmp_path / "add.jsonl"
    data.write_text(rows)
    return data


def test_eval_scores_what_the_policy_can_solve(policy, tmp_path):
    data = arithmetic_file(tmp_path)
    proc = run_eval("--model", policy, "--data", str(data), "--k", "4", "--max-tokens", "8", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "o" / "summary.json").read_text())["by_source"]["add2"]
    assert row["n"] == 48 and 0.05 < row["avg@4"] <= row["pass@4"] <= 1.0


def test_bad_arguments_are_refused_with_a_reason(policy, tmp_path):
    proc = run_eval("--model", str(tmp_path), "--data", os.path.join(DATA, "math.jsonl"))
    assert proc.returncode == 2 and "not a model directory" in proc.stderr
    proc = run_eval("--model", policy, "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = run_eval("--model", policy, "--data", os.path.join(DATA, "math.jsonl"), "--temperature", "0", "--k", "4")
    assert proc.returncode == 2 and "use --k 1" in proc.stderr


def test_filter_keeps_problems_solved_sometimes(policy, tmp_path):
    data = arithmetic_file(tmp_path)
    out = tmp_path / "kept.parquet"
    proc = run_eval("--model", policy, "--data", str(data), "--samples", "4", "--max-tokens", "8", "--out", str(out),
                    command="filter")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = [json.loads(line) for line in (tmp_path / "kept_pass_counts.jsonl").read_text().splitlines()]
    assert len(counts) == 48 and all(0 <= c["passes"] <= 4 and c["kept"] == (0 < c["passes"] < 4) for c in counts)
    import pyarrow.parquet as pq

    kept = pq.read_table(out).to_pylist()
    originals = [json.loads(line) for line in data.read_text().splitlines()]
    assert kept == [originals[c["id"]] for c in counts if c["kept"]]  # the original rows, same layout
    assert 0 < len(kept) < 48
