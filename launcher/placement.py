"""Which devices each role gets, as environment variables for its process.

On a machine with N GPUs (as `nvidia-smi -L` lists them, or as
CUDA_VISIBLE_DEVICES restricts them) the learner takes the first GPU and
actor i the next ones in turn, so learner and actors never share a device
unless there are fewer GPUs than roles. Without GPUs nothing is set (actors
pin their OpenMP threads to cores themselves, see actors/worker.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess


def visible_gpus() -> list[str]:
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def role_env(role: str, index: int, gpus: list[str]) -> dict[str, str]:
    """`role` is learner | actor; `index` the actor id."""
    if not gpus:
        return {}
    if role == "learner":
        return {"CUDA_VISIBLE_DEVICES": gpus[0]}
    pool = gpus[1:] or gpus  # one GPU: everyone shares it
    return {"CUDA_VISIBLE_DEVICES": pool[index % len(pool)]}
