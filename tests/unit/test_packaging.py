"""Installing or running asyncor shadows no well-known distribution, and none shadows it.

The design's folders (kernels/, tasks/, wire/, ...) sit at the repository's top level, and Python puts the
directory it runs from first on the import path (`python -c` and `python -m` from the root, `python
launch.py`). Hugging Face's `kernels` distribution is imported by transformers whenever it is installed;
a `kernels/__init__.py` of ours at the root used to be imported in its place (ImportError:
cannot import name 'CUDAProperties' from 'kernels'). The folders are imported only as `asyncor.<folder>` and
have no __init__.py, so a regular package of the same name anywhere on the path wins over them.

The dev environment installs Hugging Face's `kernels` (pyproject.toml, extra "dev"), as GPU users often have it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# One training step of the real learner code on a tiny transformers model, after `import transformers`.
PROBE = r"""
import json, sys
import numpy as np, torch, transformers
from transformers import Qwen2Config, Qwen2ForCausalLM
import kernels
import asyncor.kernels.logprob_entropy as ours
from asyncor.configs.schema import AlgoConfig
from asyncor.learner.entropy_control import make_entropy_control
from asyncor.learner.model import Policy
from asyncor.learner.parallel import Ranks
from asyncor.learner.update import UpdateSettings, train_step
from asyncor.wire.trajectory import Response, TrajectoryGroup

torch.manual_seed(0)
lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=16, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, pad_token_id=0))
policy = Policy(lm, temperature=1.0, impl="torch", chunk=64)
rng = np.random.default_rng(0)
groups = [TrajectoryGroup(i, np.array([1, 2, 3], np.int32),
                          [Response(rng.integers(1, 16, 4).astype(np.int32), np.full(4, -2.7, np.float32), 0, "stop",
                                    float(j % 2)) for j in range(4)], 0, i, 0.0) for i in range(2)]
algo = AlgoConfig()
step = train_step(policy, torch.optim.AdamW(policy.parameters(), lr=1e-3), groups,
                  UpdateSettings(algo=algo, eps_low=0.2, eps_high=0.2, grad_clip=1.0, pad_id=0),
                  make_entropy_control(algo.entropy), Ranks(0, 1, torch.device("cpu"), False))
print(json.dumps({"kernels": kernels.__file__, "ours": ours.__file__, "loss": step["learner/loss"]}))
"""


def probe(cwd: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, f"from {cwd}:\n{out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_hugging_face_kernels_is_in_the_dev_environment():
    assert importlib.metadata.version("kernels") == "0.17.2", "pip install -e '.[dev]' installs it"


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_a_training_step_beside_hugging_face_kernels(where: str, tmp_path):
    result = probe(ROOT if where == "root" else str(tmp_path))
    assert "site-packages" in result["kernels"], f"`import kernels` gave ours: {result['kernels']}"
    assert result["ours"] == os.path.join(ROOT, "kernels", "logprob_entropy.py")
    assert result["loss"] == result["loss"]  # finite (NaN != NaN)


def test_the_folders_are_not_packages_of_their_own():
    """Only `asyncor` is a name on the import path; each folder is reached through it."""
    with_init = [d for d in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, d, "__init__.py")) and d != "tests"]
    assert not with_init, f"{with_init}: an __init__.py makes the folder importable under its bare name from the root"
