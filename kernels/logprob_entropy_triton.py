"""Fused Triton log-prob + entropy: logits are computed tile by tile, never stored.

Forward (`_forward_kernel`): one program owns BLOCK_N tokens x one vocabulary
split of VOCAB_PER_SPLIT columns. It walks the split in BLOCK_V tiles; each
tile is a `tl.dot` over H in BLOCK_H steps with fp32 accumulation, then folds
into running per-token statistics on max-shifted logits d = z - m:
    m (running max), s = sum e^d, b = sum e^d * d, z_y (the target's logit).
Padding columns are -inf (never counted); the running max starts at -inf;
b is kept on shifted logits, so entropy = log s - b/s has no cancellation
when it is near zero. The few splits per token are merged in torch
([n_splits, N] floats, O(N) memory).

Backward: per vocabulary slice (a bounded [N, slice] workspace),
`_dlogits_kernel` recomputes the logits tile by tile and writes
    dZ = g_lp * (onehot_y - p) - g_H * p * (z - E_p[z])        (times 1/T)
from three saved floats per token (row max, log s, E_p[z - max]), all on
shifted logits so that p sums to one even when |z| is large.
then cuBLAS adds dZ @ W_slice into an fp32 d_hidden and writes
dZ^T @ X into the slice of d_weight. Total work 8*N*H*V flops (forward
2NHV + recompute 2NHV + two gradient GEMMs 4NHV); memory beyond inputs,
outputs and gradients is the workspace plus O(N).

On CPU the kernels run under TRITON_INTERPRET=1 (set before this module is
imported), which is how CI checks them; see tests/unit/test_logprob_entropy.py.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

try:
    from triton import knobs
    INTERPRET = bool(knobs.runtime.interpret)
except ImportError:  # triton < 3.4 reads the variable directly
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")

# Vocabulary columns one forward program reduces; a multiple of every BLOCK_V.
VOCAB_PER_SPLIT = 128 if INTERPRET else 2048
# Backward workspace for dZ (bytes); bounds the slice of the vocabulary per pass.
WORKSPACE_BYTES = 512 * 2**20


def _configs(blocks: list[tuple[int, int, int, int, int, int]]) -> list[triton.Config]:
    return [triton.Config({"BLOCK_N": bn, "BLOCK_V": bv, "BLOCK_H": bh, "GROUP_N": g}, num_warps=w, num_stages=s)
            for bn, bv, bh, g, w, s in blocks]


if INTERPRET:
    # Small tiles so odd test shapes hit every mask; one config (no tuning in the interpreter).
    _FORWARD_CONFIGS = _DLOGITS_CONFIGS = _configs([(16, 64, 16, 2, 1, 1)])
else:
    # (BLOCK_N, BLOCK_V, BLOCK_H, GROUP_N, warps, stages); GROUP_N co-schedules token tiles
    # that share the same weight tiles, so W is read from L2 rather than HBM. Chosen from
    # sm_90a builds that spill little or nothing (benchmarks/logprob_entropy_compile.py).
    _FORWARD_CONFIGS = _configs([
        (128, 128, 64, 16, 8, 3), (128, 128, 32, 16, 8, 4), (128, 256, 32, 16, 8, 4),
        (128, 256, 64, 16, 8, 3), (64, 256, 64, 16, 8, 4),
    ])
    _DLOGITS_CONFIGS = _configs([
        (128, 128, 64, 8, 8, 3), (64, 256, 64, 8, 8, 4), (128, 128, 32, 8, 8, 4), (128, 256, 64, 8, 8, 3),
    ])


@triton.jit
def _grouped_tile(pid, num_n_tiles, num_v_tiles, GROUP_N: tl.constexpr):
    """Tile order that keeps GROUP_N token tiles on the same vocabulary tiles at once."""
    per_group = GROUP_N * num_v_tiles
    first_n = (pid // per_group) * GROUP_N
    group_n = tl.minimum(num_n_tiles - first_n, GROUP_N)
    pid_n = first_n + (pid % per_group) % group_n
    pid_v = (pid % per_group) // group_n
    return pid_n, pid_v


@triton.jit
def _logits_tile(x_ptr, w_ptr, rows, cols, last_row, last_col, H, inv_temperature,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                 EVEN_H: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """fp32 [BLOCK_N, BLOCK_V] logits / T for the given token rows and vocabulary columns.

    Out-of-range rows and columns are clamped to the last valid one instead of
    masked (masked loads cost registers and spill on Hopper); callers mask the
    results. Only a ragged H needs a load mask, and it must be zero-filled.
    """
    offs_h = tl.arange(0, BLOCK_H)
    x_ptrs = x_ptr + tl.minimum(rows, last_row).to(tl.int64)[:, None] * H + offs_h[None, :]
    w_ptrs = w_ptr + tl.minimum(cols, last_col).to(tl.int64)[:, None] * H + offs_h[None, :]
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        if EVEN_H:
            x = tl.load(x_ptrs)
            w = tl.load(w_ptrs)
        else:
            h_ok = (h0 + offs_h) < H
            x = tl.load(x_ptrs, mask=h_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=h_ok[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_H
        w_ptrs += BLOCK_H
    return acc * inv_temperature


def _even_h(args) -> bool:
    return args["H"] % args["BLOCK_H"] == 0


@triton.autotune(configs=_FORWARD_CONFIGS, key=["H", "V"])
@triton.heuristics({"EVEN_H": _even_h})
@triton.jit
def _forward_kernel(x_ptr, w_ptr, target_ptr, m_ptr, s_ptr, b_ptr, zy_ptr,
                    N, H, V, n_splits, inv_temperature,
                    VOCAB_PER_SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_N: tl.constexpr,
                    EVEN_H: tl.constexpr):
    pid_n, pid_s = _grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_N), n_splits, GROUP_N)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    target = tl.load(target_ptr + rows, mask=row_ok, other=-1)

    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], dtype=tl.float32)
    b = tl.zeros([BLOCK_N], dtype=tl.float32)
    zy = tl.zeros([BLOCK_N], dtype=tl.float32)
    v_begin = pid_s * VOCAB_PER_SPLIT
    v_end = tl.minimum(v_begin + VOCAB_PER_SPLIT, V)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_end
        z = _logits_tile(x_ptr, w_ptr, rows, cols, N - 1, V - 1, H, inv_temperature,
                         BLOCK_N, BLOCK_V, BLOCK_H, EVEN_H, DOT_PRECISION)
        z = tl.where(col_ok[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        rescale = tl.exp(m - m_new)  # 0 on the first tile (m = -inf)
        # Re-base b = sum e^d d from the old max to the new one (nothing to re-base on
        # the first tile, where s = 0 and m - m_new = -inf).
        b = rescale * (b + s * tl.where(s > 0, m - m_new, 0.0))
        s = rescale * s
        d = z - m_new[:, None]
        p = tl.exp(d)  # exactly 0 on padding columns
        s += tl.sum(p, axis=1)
        b += tl.sum(p * tl.where(col_ok[None, :], d, 0.0), axis=1)  # 0, not 0 * -inf, on padding
        zy += tl.sum(tl.where(cols[None, :] == target[:, None], z, 0.0), axis=1)
        m = m_new

    out = pid_s * N + rows
    tl.store(m_ptr + out, m, mask=row_ok)
    tl.store(s_ptr + out, s, mask=row_ok)
    tl.store(b_ptr + out, b, mask=row_ok)
    tl.store(zy_ptr + out, zy, mask=row_ok)


@triton.autotune(configs=_DLOGITS_CONFIGS, key=["H"])
@triton.heuristics({"EVEN_H": _even_h})
@triton.jit
def _dlogits_kernel(x_ptr, w_ptr, target_ptr, max_ptr, log_s_ptr, mean_d_ptr, g_lp_ptr, g_ent_ptr, scale_ptr, dz_ptr,
                    N, H, v_begin, slice_len, dz_stride, inv_temperature,
                    HAS_G_LP: tl.constexpr, HAS_G_ENT: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_N: tl.constexpr,
                    EVEN_H: tl.constexpr):
    pid_n, pid_v = _grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(slice_len, BLOCK_V), GROUP_N)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    local = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < N
    col_ok = local < slice_len
    cols = v_begin + local
    z = _logits_tile(x_ptr, w_ptr, rows, cols, N - 1, v_begin + slice_len - 1, H, inv_temperature,
                     BLOCK_N, BLOCK_V, BLOCK_H, EVEN_H, DOT_PRECISION)
    # Work on shifted logits d = z - max, as the forward did: p then sums to 1 to
    # fp32 precision even when |z| is large, so the gradient keeps sum_v dZ = 0.
    tile_ok = row_ok[:, None] & col_ok[None, :]
    row_max = tl.load(max_ptr + rows, mask=row_ok, other=0.0)
    d = tl.where(tile_ok, z - row_max[:, None], 0.0)  # clamped rows/columns: finite, then zeroed
    log_s = tl.load(log_s_ptr + rows, mask=row_ok, other=0.0)
    p = tl.where(tile_ok, tl.exp(d - log_s[:, None]), 0.0)
    dz = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    if HAS_G_LP:
        g_lp = tl.load(g_lp_ptr + rows, mask=row_ok, other=0.0)
        target = tl.load(target_ptr + rows, mask=row_ok, other=-1)
        onehot = tl.where(cols[None, :] == target[:, None], 1.0, 0.0)
        dz += g_lp[:, None] * (onehot - p)
    if HAS_G_ENT:
        g_ent = tl.load(g_ent_ptr + rows, mask=row_ok, other=0.0)
        mean_d = tl.load(mean_d_ptr + rows, mask=row_ok, other=0.0)  # E_p[d]
        dz -= g_ent[:, None] * p * (d - mean_d[:, None])
    dz *= inv_temperature * tl.load(scale_ptr)
    ptrs = dz_ptr + rows.to(tl.int64)[:, None] * dz_stride + local[None, :]
    tl.store(ptrs, dz.to(dz_ptr.dtype.element_ty), mask=tile_ok)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products (no TF32), so fp32 callers get fp32 accuracy.
    return "ieee" if dtype == torch.float32 else "tf32"


def _forward(x: torch.Tensor, w: torch.Tensor, target: torch.Tensor, inv_temperature: float):
    N, H = x.shape
    V = w.shape[0]
    n_splits = triton.cdiv(V, VOCAB_PER_SPLIT)
    m, s, b, zy = torch.empty(4, n_splits, N, device=x.device, dtype=torch.float32).unbind(0)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]) * n_splits,)

    _forward_kernel[grid](x, w, target, m, s, b, zy, N, H, V, n_splits, inv_temperature,
                          VOCAB_PER_SPLIT=VOCAB_PER_SPLIT, DOT_PRECISION=_dot_precision(x.dtype))
    # Merge the splits; every split has at least one real column, so every m is finite.
    # Statistics stay relative to the row max: lse = max + log_s, E_p[z] = max + mean_d.
    m_max = m.max(dim=0).values
    weight = torch.exp(m - m_max)
    s_tot = (s * weight).sum(dim=0)
    log_s = torch.log(s_tot)
    mean_d = (weight * (b + s * (m - m_max))).sum(dim=0) / s_tot
    logprob = (zy.sum(dim=0) - m_max) - log_s
    entropy = (log_s - mean_d).clamp_min(0.0)
    return logprob, entropy, (m_max, log_s, mean_d)


@functools.cache
def _has_fp32_out_gemm(device_type: str) -> bool:
    """cuBLAS bf16/fp16 GEMMs with fp32 output (torch >= 2.8, CUDA only)."""
    if device_type != "cuda":
        return False
    try:
        a = torch.ones(16, 16, device="cuda", dtype=torch.bfloat16)
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def _mm_fp32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b accumulated and returned in fp32 (added into `out` when given)."""
    if a.dtype == torch.float32:
        return torch.mm(a, b) if out is None else out.addmm_(a, b)
    if _has_fp32_out_gemm(a.device.type):
        if out is None:
            return torch.mm(a, b, out_dtype=torch.float32)
        return torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
    product = a.float() @ b.float()
    return product if out is None else out.add_(product)


def _backward(x, w, target, stats, g_lp, g_ent, inv_temperature, need_dx, need_dw):
    N, H = x.shape
    V = w.shape[0]
    dz_dtype = x.dtype
    scale = torch.ones(1, device=x.device, dtype=torch.float32)
    if dz_dtype == torch.float16:
        # fp16 dZ would underflow for per-token weights like 1/num_tokens: scale the
        # upstream gradients to O(1) and undo it in fp32 after the GEMMs.
        g_max = torch.stack([g.abs().max() for g in (g_lp, g_ent) if g is not None]).max()
        scale = torch.where(g_max > 0, 1.0 / g_max, 1.0).reshape(1).float()
    slice_len = max(256, min(V, WORKSPACE_BYTES // max(1, N * x.element_size())) // 256 * 256)
    workspace = torch.empty(N, min(slice_len, V), device=x.device, dtype=dz_dtype)
    # d_hidden and d_weight are allocated after the first launch: a first call at new (H, dtype) autotunes
    # _dlogits_kernel, and Triton's benchmark holds a 256 MiB L2-flush buffer meanwhile (docs/kernels.md).
    dx32 = dw = None
    dummy = stats[0]  # stands in for an absent upstream gradient (never read)
    for v0 in range(0, V, slice_len):
        length = min(slice_len, V - v0)
        dz = workspace[:, :length]

        def grid(meta, length=length):
            return (triton.cdiv(N, meta["BLOCK_N"]) * triton.cdiv(length, meta["BLOCK_V"]),)

        _dlogits_kernel[grid](x, w, target, *stats,
                              g_lp if g_lp is not None else dummy, g_ent if g_ent is not None else dummy,
                              scale, dz, N, H, v0, length, workspace.stride(0), inv_temperature,
                              HAS_G_LP=g_lp is not None, HAS_G_ENT=g_ent is not None,
                              DOT_PRECISION=_dot_precision(x.dtype))
        if need_dx and dx32 is None:
            dx32 = torch.zeros(N, H, device=x.device, dtype=torch.float32)
        if need_dw and dw is None:
            dw = torch.empty_like(w)
        if need_dx:
            _mm_fp32(dz, w[v0:v0 + length], out=dx32)
        if need_dw:
            if dz_dtype == torch.float16:
                dw[v0:v0 + length] = _mm_fp32(dz.T, x) / scale
            else:
                torch.mm(dz.T, x, out=dw[v0:v0 + length])
    dx = None
    if need_dx:
        if dz_dtype == torch.float16:
            dx32 /= scale
        dx = dx32.to(x.dtype)
    return dx, dw


class _LogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, target, temperature, ignore_index):
        valid = target != ignore_index
        inv_temperature = 1.0 / temperature
        logprob, entropy, stats = _forward(x, w, target, inv_temperature)
        ctx.save_for_backward(x, w, target, valid, *stats)
        ctx.inv_temperature = inv_temperature
        ctx.set_materialize_grads(False)
        return torch.where(valid, logprob, 0.0), torch.where(valid, entropy, 0.0)

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        x, w, target, valid, *stats = ctx.saved_tensors
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (g_lp is None and g_ent is None) or not (need_dx or need_dw):
            return None, None, None, None, None
        # Masked tokens get no gradient whatever flows in.
        g_lp = None if g_lp is None else torch.where(valid, g_lp.float(), 0.0).contiguous()
        g_ent = None if g_ent is None else torch.where(valid, g_ent.float(), 0.0).contiguous()
        dx, dw = _backward(x, w, target, stats, g_lp, g_ent, ctx.inv_temperature, need_dx, need_dw)
        return dx, dw, None, None, None


def logprob_entropy_triton(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, target_N: torch.Tensor,
                           temperature: float, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused Triton path; inputs already validated by kernels.logprob_entropy."""
    x, w = hidden_NH.contiguous(), weight_VH.contiguous()
    target = target_N.contiguous()
    if x.shape[0] == 0:
        empty = x.new_zeros(0, dtype=torch.float32)
        return empty, empty
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        return _LogprobEntropy.apply(x, w, target, float(temperature), ignore_index)
    logprob, entropy, _ = _forward(x, w, target, 1.0 / temperature)
    valid = target != ignore_index
    return torch.where(valid, logprob, 0.0), torch.where(valid, entropy, 0.0)
