"""Which devices each role gets, as environment variables for its process.

On a machine with N GPUs (as `nvidia-smi -L` lists them, or as
CUDA_VISIBLE_DEVICES restricts them) the R learner ranks take the first R
GPUs (each rank sees all R and uses LOCAL_RANK, as torchrun does) and actor i
the next ones in turn, so learner and actors never share a device unless
there are fewer GPUs than roles. Without GPUs nothing is set (actors pin
their OpenMP threads to cores themselves, see actors/worker.py).

Every learner rank also gets the torch.distributed environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
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


def role_env(role: str, index: int, gpus: list[str], learner_ranks: int = 1) -> dict[str, str]:
    """`role` is learner | actor; `index` the learner rank or the actor id."""
    if not gpus:
        return {}
    if role == "learner":
        return {"CUDA_VISIBLE_DEVICES": ",".join(gpus[:learner_ranks])}
    pool = gpus[learner_ranks:] or gpus  # no GPU left: actors share the learner's
    return {"CUDA_VISIBLE_DEVICES": pool[index % len(pool)]}


def learner_env(rank: int, ranks: int, host: str, port: int, gpus: list[str]) -> dict[str, str]:
    return {**role_env("learner", rank, gpus, ranks), "RANK": str(rank), "WORLD_SIZE": str(ranks),
            "LOCAL_RANK": str(rank), "MASTER_ADDR": host, "MASTER_PORT": str(port)}


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: reachable from this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it resolves to whatever the network says


def check_placement(config, gpus: list[str]) -> None:
    """Settings that cannot run on this host, refused before any process starts (ValueError naming the key)."""
    ranks = config.learner.ranks
    if gpus and ranks > len(gpus):
        raise ValueError(f"learner.ranks = {ranks} but this host has {len(gpus)} GPU(s) ({','.join(gpus)}): "
                         f"one GPU per learner rank; set learner.ranks <= {len(gpus)}")
    if config.learner.offload_optimizer and not gpus:
        raise ValueError("learner.offload_optimizer = true needs CUDA GPUs (it moves the optimiser off the GPU); "
                         "on a CPU host the optimiser already is in CPU memory: set it to false")
