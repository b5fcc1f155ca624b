"""Log-prob + entropy from hidden states: ours (Triton) against the usual ways, side by side.

    python benchmarks/logprob_entropy.py                 # full table on CUDA; correctness check on CPU
    python benchmarks/logprob_entropy.py --n 4096 --v 32000 --reps 5

On CUDA, for each N (H = 4096, V = 151936, bf16 by default) it prints forward
time, forward+backward time, peak extra memory (beyond the inputs, gradients
included) and achieved throughput relative to a plain bf16 GEMM measured in the
same run:
* fwd % mm      = (2NHV / forward time) / GEMM rate
* f+b % roofline = (8NHV / GEMM rate) / forward+backward time
  (8NHV: forward 2NHV + logits recomputed in backward 2NHV + two gradient GEMMs 4NHV)
Rows: ours (fused Triton), naive eager (logits -> log_softmax -> gather,
entropy from softmax), the chunked torch path, the same under torch.compile,
and verl's / Liger's kernels when importable. Out-of-memory is reported as such.

On CPU it checks the torch path and the Triton kernels (interpreter) against
float64 and says that timings need CUDA.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported

from asyncor.kernels.logprob_entropy import logprob_entropy  # noqa: E402
from asyncor.kernels.logprob_entropy_naive import logprob_entropy_naive  # noqa: E402
from asyncor.kernels.logprob_entropy_torch import logprob_entropy_torch  # noqa: E402


def candidates(temperature: float):
    """name -> fn(hidden, weight, target) -> (logprob, entropy); unavailable ones are skipped."""
    out = {
        "ours (triton)": lambda h, w, t: logprob_entropy(h, w, t, temperature, impl="triton"),
        "naive eager": lambda h, w, t: logprob_entropy_naive(h, w, t, temperature),
        "chunked torch": lambda h, w, t: logprob_entropy_torch(h, w, t, temperature, -100, 4096),
    }
    compiled = torch.compile(logprob_entropy_torch, dynamic=False)
    out["chunked torch (compile)"] = lambda h, w, t: compiled(h, w, t, temperature, -100, 4096)
    try:
        from verl.utils.kernel.linear_cross_entropy import linear_cross_entropy
        out["verl triton"] = lambda h, w, t: linear_cross_entropy(h, w, t, temperature, "none")
    except Exception:  # noqa: BLE001 - optional baseline
        pass
    try:
        from liger_kernel.ops.fused_linear_scaled_cross_entropy import LigerFusedLinearScaledCrossEntropyFunction

        def liger(h, w, t):
            nll, entropy = LigerFusedLinearScaledCrossEntropyFunction.apply(h, w, t, temperature, -100, 1, True)[:2]
            return -nll, entropy
        out["liger (cute/fallback)"] = liger
    except Exception:  # noqa: BLE001 - optional baseline
        pass
    return out


def cuda_time(fn, reps: int) -> float:
    """Median seconds of fn() over reps runs (after one warm-up)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def peak_extra_bytes(fn) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def gemm_rate(N: int, H: int, V: int, dtype, reps: int) -> float:
    """FLOP/s of a plain [N,H] x [H,V] GEMM in `dtype` (the same work as the forward logits)."""
    a = torch.randn(N, H, device="cuda", dtype=dtype)
    b = torch.randn(V, H, device="cuda", dtype=dtype)
    seconds = cuda_time(lambda: a @ b.T, reps)
    del a, b
    return 2 * N * H * V / seconds


def bench_cuda(args) -> None:
    dtype = getattr(torch, args.dtype)
    H, V, T = args.h, args.v, args.temperature
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  dtype {args.dtype}  "
          f"H={H} V={V} T={T}  date {time.strftime('%Y-%m-%d')}")
    header = f"{'N':>6} {'impl':<24} {'fwd ms':>8} {'f+b ms':>8} {'fwd GB':>8} {'f+b GB':>8} {'fwd % mm':>9} {'f+b % roofline':>15}"
    print(header)
    print("-" * len(header))
    for N in args.n:
        rate = gemm_rate(N, H, V, dtype, args.reps)
        print(f"{N:>6} {'bf16 GEMM (reference)' if dtype == torch.bfloat16 else 'GEMM (reference)':<24} "
              f"{2 * N * H * V / rate * 1e3:8.2f} {'':>8} {'':>8} {'':>8} {rate / 1e12:6.0f} TF {'':>15}")
        g = torch.Generator(device="cuda").manual_seed(N)
        hidden = (torch.randn(N, H, device="cuda", generator=g) * 0.5).to(dtype).requires_grad_()
        weight = (torch.randn(V, H, device="cuda", generator=g) * 0.02).to(dtype).requires_grad_()
        target = torch.randint(0, V, (N,), device="cuda", generator=g)
        up_lp = torch.randn(N, device="cuda", generator=g) / N
        up_ent = torch.randn(N, device="cuda", generator=g) / N
        for name, fn in candidates(T).items():
            def forward():
                return fn(hidden, weight, target)

            def forward_backward():
                lp, ent = forward()
                torch.autograd.backward([lp, ent], [up_lp, up_ent])
                hidden.grad = weight.grad = None

            try:
                t_f = cuda_time(forward, args.reps)
                m_f = peak_extra_bytes(forward)
                t_fb = cuda_time(forward_backward, args.reps)
                m_fb = peak_extra_bytes(forward_backward)
            except torch.OutOfMemoryError:
                print(f"{N:>6} {name:<24} {'OOM':>8}")
                hidden.grad = weight.grad = None
                torch.cuda.empty_cache()
                continue
            except Exception as err:  # noqa: BLE001 - a baseline failing must not hide the others
                print(f"{N:>6} {name:<24} error: {type(err).__name__}: {str(err)[:80]}")
                hidden.grad = weight.grad = None
                continue
            fwd_frac = 2 * N * H * V / t_f / rate
            roofline = 8 * N * H * V / rate / t_fb
            print(f"{N:>6} {name:<24} {t_f * 1e3:8.2f} {t_fb * 1e3:8.2f} {m_f / 2**30:8.2f} {m_fb / 2**30:8.2f} "
                  f"{fwd_frac * 100:8.0f}% {roofline * 100:14.0f}%")
            torch.cuda.empty_cache()
        del hidden, weight, target
        torch.cuda.empty_cache()


def check_cpu() -> None:
    """Correctness on CPU: torch path and interpreted Triton kernels vs float64."""
    N, H, V, T = 37, 48, 1000, 0.8
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, H, generator=g, requires_grad=True)
    weight = (torch.randn(V, H, generator=g) * 0.3).requires_grad_()
    target = torch.randint(0, V, (N,), generator=g)
    up = torch.randn(N, generator=g)
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    lp_ref, ent_ref = logprob_entropy_naive(h64, w64, target, T)
    grads_ref = torch.autograd.grad((lp_ref * up).sum() + (ent_ref * up).sum(), (h64, w64))
    print(f"CPU correctness check, N={N} H={H} V={V} T={T}, fp32 vs float64 (max relative error)")
    print(f"{'impl':<10} {'logprob':>10} {'entropy':>10} {'d_hidden':>10} {'d_weight':>10}")
    for impl in ("torch", "triton"):
        lp, ent = logprob_entropy(hidden, weight, target, T, impl=impl)
        grads = torch.autograd.grad((lp * up).sum() + (ent * up).sum(), (hidden, weight))
        errs = [((a.double() - b).abs().max() / b.abs().max()).item()
                for a, b in [(lp, lp_ref), (ent, ent_ref), *zip(grads, grads_ref)]]
        print(f"{impl:<10} " + " ".join(f"{e:10.2e}" for e in errs))
    print("Timings need CUDA: run this script on a GPU machine for the performance table.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 16384, 32768], help="token counts")
    parser.add_argument("--h", type=int, default=4096, help="hidden size")
    parser.add_argument("--v", type=int, default=151936, help="vocabulary size")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions (median reported)")
    args = parser.parse_args()
    if torch.cuda.is_available():
        bench_cuda(args)
    else:
        check_cpu()


if __name__ == "__main__":
    main()
