"""Environment checks before any role starts: each problem a clear message naming what to change.

`check_environment` runs in `launch.py run` after the plan and before the first process: the run
directory must be creatable and writable, `model.path` (when set) a model directory (config.json that
parses with a model_type, tokenizer.json, weights); and when every role runs on this host (the local
back-end), ports set in [net] must be free here and, on a CPU host, the actors' KV caches must fit in the
memory available; with [learner.lora], its targets and rank must fit the model's linear layers
(configs/lora_fit.py). Raises `PreflightError` (the launcher reports it and exits 1; nothing was started).
"""

from __future__ import annotations

import glob
import json
import os
import socket

PORT_KEYS = ("buffer_actor_port", "buffer_learner_port", "sync_port", "store_port", "learner_port", "telemetry_port")


class PreflightError(RuntimeError):
    pass


def check_run_dir(run_dir: str) -> None:
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise PreflightError(f"run.output_dir / run.name: cannot write the run directory {run_dir} "
                             f"({exc.strerror or exc}); pick a writable run.output_dir") from None


def check_ports(net, host: str) -> None:
    """Ports fixed in [net] must be free here (ports left at 0 are picked free by the launcher)."""
    for key in PORT_KEYS:
        port = getattr(net, key)
        if not port:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError as exc:
                raise PreflightError(f"net.{key} = {port}: the port is not free on {host} ({exc.strerror}); "
                                     "choose another or 0 (any free port)") from None


def check_model_dir(path: str) -> None:
    """`path` must be a Hugging Face model directory the learner and vLLM can load."""
    where = f"model.path = {path!r}"
    if not os.path.isdir(path):
        raise PreflightError(f"{where}: no such directory (leave model.path empty to build the tiny model)")
    config = os.path.join(path, "config.json")
    try:
        with open(config) as f:
            parsed = json.load(f)
    except FileNotFoundError:
        raise PreflightError(f"{where}: no config.json, not a Hugging Face model directory") from None
    except (OSError, ValueError) as exc:
        raise PreflightError(f"{where}: config.json does not parse ({exc})") from None
    if not isinstance(parsed, dict) or "model_type" not in parsed:
        raise PreflightError(f"{where}: config.json has no model_type, not a transformers model config")
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        raise PreflightError(f"{where}: no tokenizer.json (a fast tokenizer file is needed)")
    if not glob.glob(os.path.join(path, "*.safetensors")) + glob.glob(os.path.join(path, "*.bin")):
        raise PreflightError(f"{where}: no weights (*.safetensors or *.bin)")


def available_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def check_kv_memory(config, gpus: int) -> None:
    """On a CPU host every actor's vLLM reserves `actors.kv_cache_gib` of RAM for its KV cache."""
    free = available_gib()
    if gpus or free is None:
        return  # GPUs: vLLM sizes the cache from actors.gpu_memory_utilization and says so itself
    need = config.actors.kv_cache_gib * config.actors.count
    if need > free:
        raise PreflightError(f"actors.kv_cache_gib = {config.actors.kv_cache_gib:g} x actors.count = "
                             f"{config.actors.count} needs {need:.1f} GiB for KV caches, this host has "
                             f"{free:.1f} GiB available; lower actors.kv_cache_gib or actors.count")


def check_lora(config) -> None:
    """[learner.lora] must fit the model: targets that are linear layers of it, a rank they can hold."""
    from asyncor.configs.lora_fit import check_lora_fit, linear_shapes, model_architecture

    try:
        check_lora_fit(config.learner.lora, linear_shapes(model_architecture(config)))
    except ValueError as exc:
        raise PreflightError(str(exc)) from None


def check_user_code(config) -> None:
    """task.source and a task.reward function import here, before any process starts (every role imports them the
    same way: the package or module must be on their PYTHONPATH too). A reward server is not probed: it may start
    with the run; its failures are counted per sample."""
    from asyncor.tasks import user_reward
    from asyncor.tasks.custom_task import TaskError, load_source
    from asyncor.tasks.scoring import is_url

    try:
        if config.task.kind == "custom":
            load_source(config.task.source)
        if config.task.reward and not is_url(config.task.reward):
            user_reward.load(config.task.reward)
    except (TaskError, user_reward.RewardImportError) as exc:
        raise PreflightError(str(exc)) from None


def check_environment(config, local: bool, gpus: int) -> None:
    """Everything that can be checked from the launcher's host; `local`: every role runs here too."""
    check_run_dir(config.run_dir)
    if config.model.path:
        check_model_dir(config.model.path)
    if config.learner.lora.enabled:
        check_lora(config)
    check_user_code(config)
    if local:
        check_ports(config.net, config.net.bind_address(config.net.host).replace("*", ""))
        check_kv_memory(config, gpus)
