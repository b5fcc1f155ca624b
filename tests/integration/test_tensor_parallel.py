"""Tensor-parallel actors on CPU: a vLLM engine over 2 workers (actors.tensor_parallel_size = 2) loads new
weights into both shards through the same call broadcast weights take, and then computes exactly what a
1-worker engine computes with those weights. What only GPUs can check (NCCL between the shards, memory)
is listed in docs/clusters.md."""

import json
import os
import subprocess
import sys

import pytest

from tests.integration.test_dataset_eval import policy  # noqa: F401  (the cached tiny warm start)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


def run_engine(model, tp):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "integration", "tp_engine_worker.py"),
                          "--model", model, "--tp", str(tp)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    # The worker's one JSON line; vLLM may log after it (on a busy machine its executor's shutdown warns on stdout).
    return json.loads(next(line for line in reversed(out.stdout.splitlines()) if line.startswith("{")))


def test_two_tensor_parallel_shards_both_take_the_new_weights(policy):  # noqa: F811
    one, two = run_engine(policy, 1), run_engine(policy, 2)
    flat = lambda rows: [x for row in rows for x in row]  # noqa: E731
    assert flat(one["before"]) == pytest.approx(flat(two["before"]), abs=1e-4)
    assert flat(two["after"]) != pytest.approx(flat(two["before"]), abs=1e-3)  # the weights did change
    # Had one shard kept its old weights, the sharded engine would disagree with the whole one.
    assert flat(two["after"]) == pytest.approx(flat(one["after"]), abs=1e-4)
