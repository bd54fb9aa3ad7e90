"""ADM's multi-head attention as a flash-attention kernel on guided-diffusion's qkv layout.

q, k, v are read straight out of qkv: [N, 3·H·C, T] through [N, H, C, T] strided views (legacy or new head order,
any strides), the output is written as [N, H·C, T]. Forward: online softmax in fp32 (fp64 for fp64) over key
blocks, never a T×T matrix in memory; it saves the row log-sum-exp. Backward (FlashAttention-2): δ = rowsum(dO ∘ O),
then one kernel per key block for dK, dV and one per query block for dQ, both recomputing P from the log-sum-exp.
Logits use s = C^(-1/2) (guided-diffusion's C^(-1/4) on q and on k) and exp2 with log2(e) folded in.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import _launch
from . import _sampler_math as sm

_LOG2E = 1.4426950408889634


@triton.jit
def _tile_ptrs(base, b, h, H, sN, sH, sC, sT, offs_t, offs_d):
    """Pointers to a [len(offs_t), len(offs_d)] tile (rows: positions, columns: channels) of head (b, h)."""
    head = base + b.to(tl.int64) * sN + h.to(tl.int64) * sH
    return head + offs_t[:, None].to(tl.int64) * sT + offs_d[None, :].to(tl.int64) * sC


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b accumulated in fp32 (fp64 for fp64); IEEE: exact fp32 products instead of TF32 tensor cores."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, sN, sH, sC, sT, H, T, D, qk_hi, qk_lo,
                IEEE: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr):
    bh = tl.program_id(0)  # N·H on axis 0 (up to 2^31 - 1 programs; axis 1 allows only 65,535)
    pid_m = tl.program_id(1)
    b = bh // H
    h = bh % H
    qk_scale = sm.host_scalar(qk_hi, qk_lo, ACC)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < T
    d_mask = offs_d < D
    q = tl.load(_tile_ptrs(q_ptr, b, h, H, sN, sH, sC, sT, offs_m, offs_d), mask=m_mask[:, None] & d_mask[None, :],
                other=0.0)
    # Loop-carried state in ACC from the start (fp64 products would otherwise change its type mid-loop, which
    # the GPU compiler rejects).
    m_i = tl.full([BLOCK_M], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for start in range(0, T, BLOCK_N):
        cols = start + offs_n
        n_mask = cols < T
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(_tile_ptrs(k_ptr, b, h, H, sN, sH, sC, sT, cols, offs_d), mask=kv_mask, other=0.0)
        v = tl.load(_tile_ptrs(v_ptr, b, h, H, sN, sH, sC, sT, cols, offs_d), mask=kv_mask, other=0.0)
        s = _dot(q, tl.trans(k), IEEE)
        s = tl.where(n_mask[None, :], s.to(ACC) * qk_scale, float("-inf"))  # log2 domain
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE).to(ACC)
        m_i = m_new
    acc = acc / l_i[:, None]
    # Output [N, H, C, T] contiguous (= [N, H·C, T]).
    o_base = o_ptr + bh.to(tl.int64) * D * T
    tl.store(o_base + offs_m[:, None] + offs_d[None, :].to(tl.int64) * T, acc.to(o_ptr.dtype.element_ty),
             mask=m_mask[:, None] & d_mask[None, :])
    tl.store(lse_ptr + bh.to(tl.int64) * T + offs_m, m_i + tl.log2(l_i), mask=m_mask)


@triton.jit
def _delta_kernel(o_ptr, do_ptr, delta_ptr, T, D, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """δ = rowsum(dO ∘ O) per query position; o, do: [N·H, C, T] contiguous."""
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < T)[:, None] & (offs_d < D)[None, :]
    off = bh.to(tl.int64) * D * T + offs_m[:, None] + offs_d[None, :].to(tl.int64) * T
    o = tl.load(o_ptr + off, mask=mask, other=0.0).to(ACC)
    do = tl.load(do_ptr + off, mask=mask, other=0.0).to(ACC)
    tl.store(delta_ptr + bh.to(tl.int64) * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


@triton.jit
def _bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, sN, sH, sC, sT,
                     gN, gH, gC, gT, H, T, D, qk_hi, qk_lo, sm_hi, sm_lo,
                     IEEE: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    """dV = Pᵀ dO, dK = s·dSᵀ Q over all query blocks for one key block; gX: strides of the gradient views."""
    bh = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_mask = offs_n < T
    d_mask = offs_d < D
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(_tile_ptrs(k_ptr, b, h, H, sN, sH, sC, sT, offs_n, offs_d), mask=kv_mask, other=0.0)
    v = tl.load(_tile_ptrs(v_ptr, b, h, H, sN, sH, sC, sT, offs_n, offs_d), mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    row_base = bh.to(tl.int64) * T
    do_base = do_ptr + bh.to(tl.int64) * D * T
    for start in range(0, T, BLOCK_M):
        rows = start + offs_m
        m_mask = rows < T
        q_mask = m_mask[:, None] & d_mask[None, :]
        q = tl.load(_tile_ptrs(q_ptr, b, h, H, sN, sH, sC, sT, rows, offs_d), mask=q_mask, other=0.0)
        do = tl.load(do_base + rows[:, None] + offs_d[None, :].to(tl.int64) * T, mask=q_mask, other=0.0)
        lse = tl.load(lse_ptr + row_base + rows, mask=m_mask, other=0.0)
        delta = tl.load(delta_ptr + row_base + rows, mask=m_mask, other=0.0)
        s = _dot(q, tl.trans(k), IEEE).to(ACC) * sm.host_scalar(qk_hi, qk_lo, ACC)  # [M, N], log2 domain
        p = tl.exp2(s - lse[:, None])
        p = tl.where(m_mask[:, None] & n_mask[None, :], p, 0.0)
        dv += _dot(tl.trans(p.to(do.dtype)), do, IEEE)
        dp = _dot(do, tl.trans(v), IEEE)
        ds = p * (dp - delta[:, None])
        dk += _dot(tl.trans(ds.to(q.dtype)), q, IEEE)
    dk = dk * sm.host_scalar(sm_hi, sm_lo, ACC)
    tl.store(_tile_ptrs(dk_ptr, b, h, H, gN, gH, gC, gT, offs_n, offs_d), dk.to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(_tile_ptrs(dv_ptr, b, h, H, gN, gH, gC, gT, offs_n, offs_d), dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, sN, sH, sC, sT,
                   gN, gH, gC, gT, H, T, D, qk_hi, qk_lo, sm_hi, sm_lo,
                   IEEE: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    """dQ = s·dS K over all key blocks for one query block."""
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < T
    d_mask = offs_d < D
    q_mask = m_mask[:, None] & d_mask[None, :]
    q = tl.load(_tile_ptrs(q_ptr, b, h, H, sN, sH, sC, sT, offs_m, offs_d), mask=q_mask, other=0.0)
    do = tl.load(do_ptr + bh.to(tl.int64) * D * T + offs_m[:, None] + offs_d[None, :].to(tl.int64) * T,
                 mask=q_mask, other=0.0)
    lse = tl.load(lse_ptr + bh.to(tl.int64) * T + offs_m, mask=m_mask, other=0.0)
    delta = tl.load(delta_ptr + bh.to(tl.int64) * T + offs_m, mask=m_mask, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for start in range(0, T, BLOCK_N):
        cols = start + offs_n
        n_mask = cols < T
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(_tile_ptrs(k_ptr, b, h, H, sN, sH, sC, sT, cols, offs_d), mask=kv_mask, other=0.0)
        v = tl.load(_tile_ptrs(v_ptr, b, h, H, sN, sH, sC, sT, cols, offs_d), mask=kv_mask, other=0.0)
        s = _dot(q, tl.trans(k), IEEE).to(ACC) * sm.host_scalar(qk_hi, qk_lo, ACC)
        p = tl.exp2(s - lse[:, None])
        p = tl.where(m_mask[:, None] & n_mask[None, :], p, 0.0)
        dp = _dot(do, tl.trans(v), IEEE)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, IEEE)
    dq = dq * sm.host_scalar(sm_hi, sm_lo, ACC)
    tl.store(_tile_ptrs(dq_ptr, b, h, H, gN, gH, gC, gT, offs_m, offs_d), dq.to(dq_ptr.dtype.element_ty), mask=q_mask)


def _split(qkv, num_heads, legacy):
    from fastdiff.ops.qkv_attention import split_heads
    return split_heads(qkv, num_heads, legacy)


# fp64 tiles above this head dimension need more shared memory than any GPU has (dK/dV at BLOCK_D = 256: 192 KiB
# at the smallest 16x16 tiles, over the A100's 163 KiB), so such attention runs on the reference instead.
MAX_FP64_HEAD_DIM = 128


def unsupported(d: int, dtype: torch.dtype) -> str | None:
    """Why the kernels cannot take heads of dimension d in `dtype` here (None: they can)."""
    if dtype == torch.bfloat16 and _launch.interpreted():
        return ("Triton's interpreter (TRITON_INTERPRET=1) has no bfloat16 dot: it computes garbage; run on a GPU, "
                "or use float16 / float32")
    if dtype == torch.float64 and d > MAX_FP64_HEAD_DIM and not _launch.interpreted():
        return f"float64 attention with head dimension {d} > {MAX_FP64_HEAD_DIM} does not fit a GPU's shared memory"
    return None


def _config(d: int, dtype: torch.dtype):
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages) for head dimension d in `dtype`.

    One table for every GPU: each tile fits the smallest per-block shared memory of the targets (sm_86/sm_89,
    99 KiB; sm_80 163 KiB, sm_90 227 KiB) with at most 336 bytes of spills per thread, checked by compiling every
    entry for sm_80, sm_86, sm_89 and sm_90 (`make triton-check`). fp16/bf16 use tensor cores (wgmma on Hopper);
    at BLOCK_D 128 and 256 the previous 64x64 four-warp tiles spilled 2-43 KB per thread on sm_80 and needed up to
    200 KiB. fp32 and fp64 dots are exact (IEEE) FMA loops, where large tiles only add registers: 128x64 fp32 tiles
    spilled 55-312 KB and needed up to 272 KiB. The interpreter gets small tiles for speed.
    """
    block_d = max(16, triton.next_power_of_2(d))
    if _launch.interpreted():
        return 16, 16, block_d, 4, 1
    if dtype == torch.float64:
        return 16, 16, block_d, 8, 1
    if dtype == torch.float32:
        return (32, 16, block_d, 4, 1) if block_d <= 64 else (16, 16, block_d, 8, 1)
    if block_d <= 64:
        return 128, 64, block_d, 4, 3
    if block_d == 128:
        return 64, 64, block_d, 8, 1
    return 32, 32, block_d, 4, 1


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics and accumulators: fp64 for fp64 inputs, fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _precision(dtype: torch.dtype) -> dict:
    """The kernels' IEEE (exact fp32/fp64 dots, no TF32) and ACC constexprs for inputs of `dtype`."""
    return {"IEEE": dtype in (torch.float32, torch.float64),
            "ACC": tl.float64 if dtype == torch.float64 else tl.float32}


def _scales(d: int) -> tuple[float, float, float, float]:
    """(qk_hi, qk_lo, sm_hi, sm_lo): the logit scale C^(-1/2)·log2(e) and C^(-1/2), each as fp32 hi + lo halves
    (Triton passes Python floats as fp32; host_scalar rebuilds them, to ~48 bits in fp64 kernels)."""
    sm_scale = 1.0 / math.sqrt(d)
    return _launch.split_float(sm_scale * _LOG2E) + _launch.split_float(sm_scale)


@_launch.on_tensor_device
def attention_forward(qkv: torch.Tensor, num_heads: int, legacy: bool):
    """(out [N, H·C, T], lse [N·H, T] in log2 units, fp32 (fp64 for fp64 qkv)) for qkv [N, 3·H·C, T];
    as qkv_attention.reference."""
    n, width, t = qkv.shape
    d = width // (3 * num_heads)
    why = unsupported(d, qkv.dtype)
    if why:
        raise ValueError(why)
    q, k, v = _split(qkv, num_heads, legacy)
    out = torch.empty((n, num_heads * d, t), dtype=qkv.dtype, device=qkv.device)
    lse = torch.empty((n * num_heads, t), dtype=_acc(qkv.dtype), device=qkv.device)
    if out.numel() == 0:
        return out, lse
    bm, bn, bd, warps, stages = _config(d, qkv.dtype)
    grid = (n * num_heads, triton.cdiv(t, bm))
    qk_hi, qk_lo, _, _ = _scales(d)
    _fwd_kernel[grid](q, k, v, out, lse, *q.stride(), num_heads, _launch.loop_bound(t), d, qk_hi, qk_lo,
                      **_precision(qkv.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages)
    return out, lse


@_launch.on_tensor_device
def attention_backward(qkv, out, lse, grad, num_heads: int, legacy: bool):
    """∂loss/∂qkv [N, 3·H·C, T] (contiguous) from the output gradient, recomputing P from the log-sum-exp."""
    n, width, t = qkv.shape
    d = width // (3 * num_heads)
    q, k, v = _split(qkv, num_heads, legacy)
    dqkv = torch.empty((n, width, t), dtype=qkv.dtype, device=qkv.device)
    if dqkv.numel() == 0:
        return dqkv.zero_()
    dq, dk, dv = _split(dqkv, num_heads, legacy)
    do = grad.contiguous()
    bm, bn, bd, warps, stages = _config(d, qkv.dtype)
    precision = _precision(qkv.dtype)
    delta = torch.empty_like(lse)
    _delta_kernel[(n * num_heads, triton.cdiv(t, bm))](out, do, delta, _launch.loop_bound(t), d, ACC=precision["ACC"],
                                                       BLOCK_M=bm, BLOCK_D=bd, num_warps=warps)
    args = (*q.stride(), *dq.stride(), num_heads, _launch.loop_bound(t), d, *_scales(d))
    tiles = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages)
    _bwd_dkdv_kernel[(n * num_heads, triton.cdiv(t, bn))](q, k, v, do, lse, delta, dk, dv, *args, **precision, **tiles)
    _bwd_dq_kernel[(n * num_heads, triton.cdiv(t, bm))](q, k, v, do, lse, delta, dq, *args, **precision, **tiles)
    return dqkv


def qkv_attention(qkv, num_heads, legacy=True):
    """The forward output alone, with the positional arguments of fastdiff.ops.qkv_attention.reference."""
    return attention_forward(qkv, num_heads, legacy)[0]
