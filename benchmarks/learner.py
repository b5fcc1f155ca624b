"""Learner step throughput: packed vs padded micro-batches, 1 vs 2 ranks, on a locally built random model.

    python benchmarks/learner.py                          # CPU: tiny and cpu-small shapes, R = 1 and 2
    python benchmarks/learner.py --shapes qwen2.5-0.5b qwen2.5-1.5b --ranks 1 --sequences 48 --max-len 8192
                                                          # CUDA (bf16, fused Triton log-prob kernel)

Each row is one configuration run in fresh processes (R of them, torch.distributed on gloo / NCCL): a model
built from a public architecture config with random weights (nothing downloaded), synthetic rollout groups
with long-tailed response lengths (most short, a few at the limit, as in RL on reasoning data), and
`learner.update.train_step` (the real one: AdamW, fused log-prob + entropy, entropy bonus, FSDP2 when
sharded) timed over --steps steps after one warm-up step. Columns:
* real tok/s  - prompt + response tokens trained per second (padding not counted);
* MFU         - model FLOPs (6 x matmul params x tokens + 6 x lm_head for response tokens + causal attention)
                per second over the matmul rate measured in the same run on the same hardware: a bf16 GEMM on
                one GPU times the ranks (CUDA), a float32 GEMM on all the cores (CPU: the ranks share them);
* peak        - max GPU memory allocated (CUDA) or peak RSS of rank 0 (CPU);
* padding     - share of the computed token positions that were padding (learner/padding_frac).
The no-grad pre-pass a step makes when it has several micro-batches (the entropy controller's input) is
compute the MFU does not count, like activation recomputation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # public architecture configs (Qwen2.5 config.json values), built with random weights
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                 intermediate_size=512, vocab_size=16, tie_word_embeddings=False),
    "cpu-small": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2,
                      intermediate_size=1024, vocab_size=8192, tie_word_embeddings=False),
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True),
}


def response_lengths(n: int, max_len: int, seed: int):
    """Long-tailed: lognormal around max_len / 10, clipped at the limit (the clipped ones are 'truncated')."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(max_len / 10), 1.0, n), 4, max_len).astype(int)


def synthetic_groups(sequences: int, max_len: int, group_size: int, prompt_len: int, vocab: int):
    """Rollout groups of random tokens with long-tailed response lengths (`response_lengths`), rewards 0/1."""
    import numpy as np

    from asyncor.wire.trajectory import Response, TrajectoryGroup

    rng = np.random.default_rng(1)
    lengths = response_lengths(sequences, max_len, seed=2)
    groups = []
    for g in range(0, len(lengths), group_size):
        responses = [Response(rng.integers(0, vocab, n).astype(np.int32), np.full(n, -np.log(vocab), np.float32), 0,
                              "length" if n >= max_len else "stop", float(j % 2))
                     for j, n in enumerate(lengths[g:g + group_size])]
        groups.append(TrajectoryGroup(g, rng.integers(0, vocab, prompt_len).astype(np.int32), responses, 0, g, 0.0))
    return groups, lengths


def model_flops(shape: dict, seq_lens, resp_lens) -> float:
    H, L, I, V = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"], shape["vocab_size"]
    kv = H * shape["num_key_value_heads"] // shape["num_attention_heads"]
    per_token = L * (2 * H * H + 2 * H * kv + 3 * H * I)  # q, o, k, v and the gated MLP: matmul parameters
    tokens = sum(seq_lens)
    attention = sum(2 * L * H * s * s for s in seq_lens)  # QK^T and AV, causal half: 2 x 2 x L x H x s^2 / 2
    return 3 * (2 * per_token * tokens + 2 * V * H * sum(resp_lens) + attention)  # forward + backward = 3 x forward


def matmul_rate(device, dtype) -> float:
    import torch

    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    reps, t = 20 if device.type == "cuda" else 5, time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def worker(args) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from asyncor.configs.schema import AlgoConfig
    from asyncor.kernels.logprob_entropy import resolve_impl
    from asyncor.learner.entropy_control import make_entropy_control
    from asyncor.learner.model import Policy
    from asyncor.learner.packing import layout_for
    from asyncor.learner.parallel import init_ranks, parallelize
    from asyncor.learner.update import UpdateSettings, train_step

    dtype_name = "bfloat16" if torch.cuda.is_available() else "float32"
    ranks = init_ranks(dtype_name, 600)
    if ranks.device.type == "cpu":
        torch.set_num_threads(args.threads)
    shape = SHAPES[args.shape]
    torch.manual_seed(0)
    with torch.device(ranks.device):
        lm = Qwen2ForCausalLM(Qwen2Config(**shape, max_position_embeddings=args.prompt_len + args.max_len + 8,
                                          attn_implementation=args.attn)).float()
    if args.checkpointing:
        lm.config.use_cache = False
    policy = parallelize(Policy(lm, 1.0, resolve_impl("auto", ranks.device), 4096), ranks,
                         getattr(torch, dtype_name), args.checkpointing).train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    groups, lengths = synthetic_groups(args.sequences, args.max_len, args.group_size, args.prompt_len,
                                       shape["vocab_size"])
    algo = AlgoConfig(entropy={"mode": "fixed", "fixed_coef": 1e-3})
    settings = UpdateSettings(algo, 0.2, 0.2, 1.0, pad_id=0, micro_batch_tokens=args.micro_batch_tokens,
                              layout=layout_for(args.packing, args.attn))
    control = make_entropy_control(algo.entropy)
    step = lambda: train_step(policy, opt, groups, settings, control, ranks)
    m = step()  # warm-up (allocator, kernels, autotuning)
    if ranks.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(args.steps):
        m = step()
    if ranks.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = (time.perf_counter() - t) / args.steps
    if ranks.main:
        seq_lens = [args.prompt_len + int(n) for n in lengths]
        peak = (torch.cuda.max_memory_allocated() if ranks.device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        result = {"step_s": elapsed, "tokens": sum(seq_lens), "flops": model_flops(shape, seq_lens, lengths.tolist()),
                  "peak_bytes": peak, "padding_frac": m["learner/padding_frac"],
                  "micro_batches": m["learner/micro_batches"], "device": torch.cuda.get_device_name()
                  if ranks.device.type == "cuda" else f"cpu x {args.threads * ranks.world} threads"}
        Path(args.out).write_text(json.dumps(result))
    ranks.close()


def run_config(args, shape, packing, ranks, port) -> dict:
    out = Path(tempfile.mkdtemp(prefix="asyncor-bench-")) / "result.json"
    cpu = not _cuda()
    threads = max(1, (os.cpu_count() or 1) // ranks) if cpu else 1
    cmd = [sys.executable, __file__, "--worker", "--shape", shape, "--out", str(out), "--threads", str(threads),
           "--sequences", str(args.sequences), "--group-size", str(args.group_size), "--max-len", str(args.max_len),
           "--prompt-len", str(args.prompt_len), "--micro-batch-tokens", str(args.micro_batch_tokens),
           "--steps", str(args.steps), "--attn", args.attn] + (["--packing"] if packing else []) + \
          (["--checkpointing"] if args.checkpointing else [])
    procs = []
    for rank in range(ranks):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": str(threads)}
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT))
    codes = [p.wait() for p in procs]
    if any(codes) or not out.exists():
        return {"error": f"exit codes {codes}"}
    return json.loads(out.read_text())


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=None, choices=sorted(SHAPES))
    parser.add_argument("--ranks", nargs="+", type=int, default=None, help="default: 1 2 on CPU, 1 on CUDA")
    parser.add_argument("--sequences", type=int, default=64, help="responses per step")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=512, help="response length limit")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--micro-batch-tokens", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--packing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from asyncor.launcher.ports import free_port

    import torch

    cuda = _cuda()
    if not cuda:
        torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device("cuda" if cuda else "cpu")
    rate = matmul_rate(device, torch.bfloat16 if cuda else torch.float32)
    shapes = args.shapes or (["qwen2.5-0.5b"] if cuda else ["tiny", "cpu-small"])
    rank_list = args.ranks or ([1] if cuda else [1, 2])
    print(f"{args.sequences} responses per step, lengths long-tailed up to {args.max_len} (+{args.prompt_len} prompt), "
          f"micro-batch budget {args.micro_batch_tokens} tokens, {args.steps} timed steps, attention {args.attn}"
          f"{', activation checkpointing' if args.checkpointing else ''}; "
          f"measured GEMM rate {rate / 1e12:.3g} TFLOP/s ({'bf16, one GPU' if cuda else 'float32, all cores'})\n")
    header = f"| shape | batching | ranks | micro-batches | padding | real tok/s | step s | MFU | peak GiB | device |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for shape in shapes:
        for ranks in rank_list:
            for packing in (True, False):
                r = run_config(args, shape, packing, ranks, free_port())
                name = "packed" if packing else "padded"
                if "error" in r:
                    print(f"| {shape} | {name} | {ranks} | failed: {r['error']} |||||||", flush=True)
                    continue
                mfu = r["flops"] / r["step_s"] / (rate * (ranks if cuda else 1))
                print(f"| {shape} | {name} | {ranks} | {r['micro_batches']} | {r['padding_frac']:.1%} | "
                      f"{r['tokens'] / r['step_s']:,.0f} | {r['step_s']:.3f} | {mfu:.1%} | "
                      f"{r['peak_bytes'] / 2**30:.2f} | {r['device']} |", flush=True)


if __name__ == "__main__":
    main()
