"""Which devices each role gets, as environment variables for its process.

The plan (launcher/plan.py) says which GPUs of its node a role uses, as
indices; `slot_env` turns them into CUDA_VISIBLE_DEVICES with the node's
device ids (on one host: as `nvidia-smi -L` lists them, or as
CUDA_VISIBLE_DEVICES restricts them). Learner ranks each see every learner
GPU and pick theirs with LOCAL_RANK, as torchrun does. Without GPUs nothing
is set (actors bind their engine's OpenMP threads to cores themselves:
actors/worker.py with runtime/cores.py).

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


def slot_env(plan, slot, device_ids: list[str], master_addr: str, master_port: int) -> dict[str, str]:
    """The environment of the role in `slot`; `device_ids[i]` is the id of GPU index i on the slot's node."""
    if slot.role == "learner":
        learners = sorted((s for s in plan.slots if s.role == "learner"), key=lambda s: s.index)
        env = {"RANK": str(slot.index), "WORLD_SIZE": str(len(learners)), "LOCAL_RANK": str(slot.index),
               "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)}
        gpus = [g for s in learners for g in s.gpus]
    else:
        env, gpus = {}, list(slot.gpus)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(device_ids[g] for g in gpus)
    return env


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
    if config.learner.offload_optimizer and not gpus:
        raise ValueError("learner.offload_optimizer = true needs CUDA GPUs (it moves the optimiser off the GPU); "
                         "on a CPU host the optimiser already is in CPU memory: set it to false")
