"""Build the fused log-prob kernels for a GPU architecture without a GPU, and report registers.

    python benchmarks/logprob_entropy_compile.py            # every autotune config, bf16, sm_90a (H100/H200)
    python benchmarks/logprob_entropy_compile.py --quick    # first config of each kernel (what the tests run)
    python benchmarks/logprob_entropy_compile.py --arch 100 --dtype float16

Triton lowers the kernels to PTX and its bundled ptxas assembles them, so the
CUDA code path is compiled and checked on a CPU-only machine: a compile error,
register spills (local-memory traffic in the hot loop) or a missing tensor-core
instruction (wgmma on Hopper) show up here before anyone gets a GPU. Timings
still need a GPU (benchmarks/logprob_entropy.py).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: the interpreter does not compile kernels")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from asyncor.kernels import logprob_entropy_triton as kernels  # noqa: E402

TRITON_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}

FORWARD_SIGNATURE = {
    "x_ptr": "*{d}", "w_ptr": "*{d}", "target_ptr": "*i64", "m_ptr": "*fp32", "s_ptr": "*fp32", "b_ptr": "*fp32",
    "zy_ptr": "*fp32", "N": "i32", "H": "i32", "V": "i32", "n_splits": "i32", "inv_temperature": "fp32",
}
DLOGITS_SIGNATURE = {
    "x_ptr": "*{d}", "w_ptr": "*{d}", "target_ptr": "*i64", "max_ptr": "*fp32", "log_s_ptr": "*fp32",
    "mean_d_ptr": "*fp32", "g_lp_ptr": "*fp32", "g_ent_ptr": "*fp32", "scale_ptr": "*fp32", "dz_ptr": "*{d}",
    "N": "i32", "H": "i32", "v_begin": "i32", "slice_len": "i32", "dz_stride": "i32", "inv_temperature": "fp32",
}


def ptxas_path() -> str:
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    for name in ("ptxas-blackwell", "ptxas"):  # the newest bundled ptxas reads the newest PTX
        if (bin_dir / name).exists():
            return str(bin_dir / name)
    raise FileNotFoundError(f"no ptxas under {bin_dir}")


def build(kernel, signature: dict, constexprs: dict, config: triton.Config, dtype: str, arch: int) -> dict:
    sig = {name: kind.format(d=TRITON_DTYPE[dtype]) for name, kind in signature.items()}
    consts = {**constexprs, **config.kwargs}
    sig.update({name: "constexpr" for name in consts})
    jit_fn = kernel.fn.fn  # Autotuner -> Heuristics -> JITFunction
    compiled = triton.compile(ASTSource(jit_fn, sig, constexprs=consts), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    ptx = compiled.asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as handle:
        handle.write(ptx)
    suffix = "a" if arch in (90, 100) else ""
    out = subprocess.run([ptxas_path(), "-v", f"--gpu-name=sm_{arch}{suffix}", handle.name, "-o", os.devnull],
                         capture_output=True, text=True)
    os.unlink(handle.name)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    regs = re.findall(r"Used (\d+) registers", out.stderr)
    spills = re.findall(r"(\d+) bytes spill stores", out.stderr)
    return {"regs": int(regs[-1]) if regs else -1, "spill_bytes": int(spills[-1]) if spills else 0,
            "smem": compiled.metadata.shared, "tensor_cores": "wgmma" if "wgmma" in ptx else ("mma" if "mma" in ptx else "none")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = H100/H200)")
    parser.add_argument("--dtype", default="bfloat16", choices=list(TRITON_DTYPE))
    parser.add_argument("--quick", action="store_true", help="only the first config of each kernel")
    args = parser.parse_args()
    precision = "ieee" if args.dtype == "float32" else "tf32"
    jobs = [("forward", kernels._forward_kernel, FORWARD_SIGNATURE,
             {"VOCAB_PER_SPLIT": kernels.VOCAB_PER_SPLIT, "DOT_PRECISION": precision, "EVEN_H": True}),
            ("dlogits", kernels._dlogits_kernel, DLOGITS_SIGNATURE,
             {"HAS_G_LP": True, "HAS_G_ENT": True, "DOT_PRECISION": precision, "EVEN_H": True})]
    print(f"triton {triton.__version__}  target sm_{args.arch}  dtype {args.dtype}")
    print(f"{'kernel':<8} {'BLOCK_N,V,H':<13} {'warps':>5} {'stages':>6} {'regs':>5} {'spill B':>8} {'smem KiB':>9} {'MMA':>6}")
    for name, kernel, signature, constexprs in jobs:
        for config in kernel.configs[:1] if args.quick else kernel.configs:
            kw = config.kwargs
            info = build(kernel, signature, constexprs, config, args.dtype, args.arch)
            print(f"{name:<8} {kw['BLOCK_N']:>3},{kw['BLOCK_V']:>3},{kw['BLOCK_H']:>3}   {config.num_warps:>5} "
                  f"{config.num_stages:>6} {info['regs']:>5} {info['spill_bytes']:>8} {info['smem'] / 1024:>9.0f} "
                  f"{info['tensor_cores']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
