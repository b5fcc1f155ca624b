"""The CUDA build of the fused kernels: compiled for sm_90a (H100/H200) on this CPU-only machine.

The interpreter checks the kernels' arithmetic, not that they compile for a GPU;
this builds them with Triton's bundled ptxas and checks they use Hopper tensor
cores (wgmma), so a CUDA-only compile error cannot reach a GPU run unseen.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_kernels_build_for_hopper_with_tensor_cores():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "logprob_entropy_compile.py"), "--quick"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith(("forward", "dlogits"))]
    assert [r[0] for r in rows] == ["forward", "dlogits"]
    assert all(r[-1] == "wgmma" for r in rows), out.stdout
