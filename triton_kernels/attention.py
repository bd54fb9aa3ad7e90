"""Multi-head attention as a flash-attention kernel on any strided layout (Dao et al., FlashAttention-2, 2023).

Every launcher hands the kernels [B, H, L, D] views (batch, head, position, channel) with arbitrary strides, so
one set of kernels serves both layouts fastdiff has:

- diffusers' q: [B, Lq, H·D], k, v: [B, Lk, H·D] (head h = channels [h·D, (h+1)·D); `fastdiff.ops.attention`),
  viewed as `x.unflatten(-1, (H, D)).transpose(1, 2)`, e.g. straight out of a fused qkv projection's `chunk`;
- guided-diffusion's packed qkv: [N, 3·H·C, T] (`fastdiff.ops.qkv_attention`, triton_kernels/qkv_attention.py).

Self- and cross-attention: the key length Lk may differ from the query length Lq; the ragged tails of both are
masked. Forward: online softmax in fp32 (fp64 for fp64) over key blocks, never an Lq×Lk matrix in memory; it saves
the row log-sum-exp. Backward (FlashAttention-2): δ = rowsum(dO ∘ O), then one kernel per key block for dK, dV and
one per query block for dQ, both recomputing P from the log-sum-exp. Logits use the caller's scale s (1/√D by
default) with log2(e) folded in, and exp2. Head dimensions that are not a power of two (Stable Diffusion's 40, 80,
160) are padded to the next power of two ≥ 16 in registers (masked loads), never in memory.
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
def _tile_ptrs(base, b, h, sB, sH, sT, sD, offs_t, offs_d):
    """Pointers to a [len(offs_t), len(offs_d)] tile (rows: positions, columns: channels) of head (b, h) of a
    [B, H, L, D] view with strides (sB, sH, sT, sD)."""
    head = base + b.to(tl.int64) * sB + h.to(tl.int64) * sH
    return head + offs_t[:, None].to(tl.int64) * sT + offs_d[None, :].to(tl.int64) * sD


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b accumulated in fp32 (fp64 for fp64); IEEE: exact fp32 products instead of TF32 tensor cores."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
                sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod,
                H, TQ, TK, D, qk_hi, qk_lo,
                IEEE: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """O = softmax(s·Q Kᵀ) V for one query block of one head; lse: [B·H, TQ] contiguous, log2 units."""
    bh = tl.program_id(0)  # B·H on axis 0 (up to 2^31 - 1 programs; axis 1 allows only 65,535)
    pid_m = tl.program_id(1)
    b = bh // H
    h = bh % H
    qk_scale = sm.host_scalar(qk_hi, qk_lo, ACC)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < TQ
    d_mask = offs_d < D
    q_mask = m_mask[:, None] & d_mask[None, :]
    q = tl.load(_tile_ptrs(q_ptr, b, h, sqb, sqh, sqt, sqd, offs_m, offs_d), mask=q_mask, other=0.0)
    # Loop-carried state in ACC from the start (fp64 products would otherwise change its type mid-loop, which
    # the GPU compiler rejects).
    m_i = tl.full([BLOCK_M], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for start in range(0, TK, BLOCK_N):
        cols = start + offs_n
        n_mask = cols < TK
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(_tile_ptrs(k_ptr, b, h, skb, skh, skt, skd, cols, offs_d), mask=kv_mask, other=0.0)
        v = tl.load(_tile_ptrs(v_ptr, b, h, svb, svh, svt, svd, cols, offs_d), mask=kv_mask, other=0.0)
        s = _dot(q, tl.trans(k), IEEE)
        s = tl.where(n_mask[None, :], s.to(ACC) * qk_scale, float("-inf"))  # log2 domain
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE).to(ACC)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(_tile_ptrs(o_ptr, b, h, sob, soh, sot, sod, offs_m, offs_d), acc.to(o_ptr.dtype.element_ty),
             mask=q_mask)
    tl.store(lse_ptr + bh.to(tl.int64) * TQ + offs_m, m_i + tl.log2(l_i), mask=m_mask)


@triton.jit
def _delta_kernel(o_ptr, do_ptr, delta_ptr, sob, soh, sot, sod, sgb, sgh, sgt, sgd, H, TQ, D,
                  ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """δ = rowsum(dO ∘ O) per query position; o, do: [B, H, TQ, D] views, delta: [B·H, TQ] contiguous."""
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < TQ)[:, None] & (offs_d < D)[None, :]
    o = tl.load(_tile_ptrs(o_ptr, b, h, sob, soh, sot, sod, offs_m, offs_d), mask=mask, other=0.0).to(ACC)
    do = tl.load(_tile_ptrs(do_ptr, b, h, sgb, sgh, sgt, sgd, offs_m, offs_d), mask=mask, other=0.0).to(ACC)
    tl.store(delta_ptr + bh.to(tl.int64) * TQ + offs_m, tl.sum(o * do, 1), mask=offs_m < TQ)


@triton.jit
def _bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                     sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgd,
                     dkb, dkh, dkt, dkd, dvb, dvh, dvt, dvd,
                     H, TQ, TK, D, qk_hi, qk_lo, sm_hi, sm_lo,
                     IEEE: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    """dV = Pᵀ dO, dK = s·dSᵀ Q over all query blocks for one key block (dS = P ∘ (dO Vᵀ − δ))."""
    bh = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_mask = offs_n < TK
    d_mask = offs_d < D
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(_tile_ptrs(k_ptr, b, h, skb, skh, skt, skd, offs_n, offs_d), mask=kv_mask, other=0.0)
    v = tl.load(_tile_ptrs(v_ptr, b, h, svb, svh, svt, svd, offs_n, offs_d), mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    row_base = bh.to(tl.int64) * TQ
    for start in range(0, TQ, BLOCK_M):
        rows = start + offs_m
        m_mask = rows < TQ
        q_mask = m_mask[:, None] & d_mask[None, :]
        q = tl.load(_tile_ptrs(q_ptr, b, h, sqb, sqh, sqt, sqd, rows, offs_d), mask=q_mask, other=0.0)
        do = tl.load(_tile_ptrs(do_ptr, b, h, sgb, sgh, sgt, sgd, rows, offs_d), mask=q_mask, other=0.0)
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
    tl.store(_tile_ptrs(dk_ptr, b, h, dkb, dkh, dkt, dkd, offs_n, offs_d), dk.to(dk_ptr.dtype.element_ty),
             mask=kv_mask)
    tl.store(_tile_ptrs(dv_ptr, b, h, dvb, dvh, dvt, dvd, offs_n, offs_d), dv.to(dv_ptr.dtype.element_ty),
             mask=kv_mask)


@triton.jit
def _bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                   sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgd,
                   dqb, dqh, dqt, dqd,
                   H, TQ, TK, D, qk_hi, qk_lo, sm_hi, sm_lo,
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
    m_mask = offs_m < TQ
    d_mask = offs_d < D
    q_mask = m_mask[:, None] & d_mask[None, :]
    q = tl.load(_tile_ptrs(q_ptr, b, h, sqb, sqh, sqt, sqd, offs_m, offs_d), mask=q_mask, other=0.0)
    do = tl.load(_tile_ptrs(do_ptr, b, h, sgb, sgh, sgt, sgd, offs_m, offs_d), mask=q_mask, other=0.0)
    lse = tl.load(lse_ptr + bh.to(tl.int64) * TQ + offs_m, mask=m_mask, other=0.0)
    delta = tl.load(delta_ptr + bh.to(tl.int64) * TQ + offs_m, mask=m_mask, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for start in range(0, TK, BLOCK_N):
        cols = start + offs_n
        n_mask = cols < TK
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(_tile_ptrs(k_ptr, b, h, skb, skh, skt, skd, cols, offs_d), mask=kv_mask, other=0.0)
        v = tl.load(_tile_ptrs(v_ptr, b, h, svb, svh, svt, svd, cols, offs_d), mask=kv_mask, other=0.0)
        s = _dot(q, tl.trans(k), IEEE).to(ACC) * sm.host_scalar(qk_hi, qk_lo, ACC)
        p = tl.exp2(s - lse[:, None])
        p = tl.where(m_mask[:, None] & n_mask[None, :], p, 0.0)
        dp = _dot(do, tl.trans(v), IEEE)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, IEEE)
    dq = dq * sm.host_scalar(sm_hi, sm_lo, ACC)
    tl.store(_tile_ptrs(dq_ptr, b, h, dqb, dqh, dqt, dqd, offs_m, offs_d), dq.to(dq_ptr.dtype.element_ty),
             mask=q_mask)


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
    99 KiB; sm_80 163 KiB, sm_90 227 KiB) with at most 524 bytes of spills per thread, checked by compiling every
    entry for sm_80, sm_86, sm_89 and sm_90 in both layouts (`make triton-check`; the most: fp16/bf16 dK/dV at
    BLOCK_D 64 in diffusers' layout on sm_80). fp16/bf16 use tensor cores (wgmma on Hopper); at BLOCK_D 128 and
    256 the previous 64x64 four-warp tiles spilled 2-43 KB per thread on sm_80 and needed up to 200 KiB. fp32 and
    fp64 dots are exact (IEEE) FMA loops, where large tiles only add registers: 128x64 fp32 tiles spilled 55-312 KB
    and needed up to 272 KiB. The interpreter gets small tiles for speed.
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


def _scales(sm_scale: float) -> tuple[float, float, float, float]:
    """(qk_hi, qk_lo, sm_hi, sm_lo): the logit scale s·log2(e) and s, each as fp32 hi + lo halves (Triton passes
    Python floats as fp32; host_scalar rebuilds them, to ~48 bits in fp64 kernels)."""
    return _launch.split_float(sm_scale * _LOG2E) + _launch.split_float(sm_scale)


@_launch.on_tensor_device
def flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, sm_scale: float):
    """Write softmax(s·q kᵀ) v into `out` and return the row log-sum-exp [B·H, Lq] (log2 units; fp32, fp64 for
    fp64). q, out: [B, H, Lq, D] views, k, v: [B, H, Lk, D] views, any strides; Lk ≥ 1."""
    b, h, tq, d = q.shape
    tk = k.shape[2]
    lse = torch.empty((b * h, tq), dtype=_acc(q.dtype), device=q.device)
    if out.numel() == 0:
        return lse
    bm, bn, bd, warps, stages = _config(d, q.dtype)
    qk_hi, qk_lo, _, _ = _scales(sm_scale)
    _fwd_kernel[(b * h, triton.cdiv(tq, bm))](
        q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(), h, _launch.loop_bound(tq),
        _launch.loop_bound(tk), d, qk_hi, qk_lo, **_precision(q.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
        num_warps=warps, num_stages=stages)
    return lse


@_launch.on_tensor_device
def flash_backward(q, k, v, out, grad, lse, dq, dk, dv, sm_scale: float) -> None:
    """Write ∂loss/∂q, ∂k, ∂v into the [B, H, L, D] views dq, dk, dv (any strides) from the output gradient
    `grad` (a [B, H, Lq, D] view, any strides, zero strides included), recomputing P from the log-sum-exp."""
    b, h, tq, d = q.shape
    tk = k.shape[2]
    if q.numel() == 0 or k.numel() == 0:
        return
    bm, bn, bd, warps, stages = _config(d, q.dtype)
    precision = _precision(q.dtype)
    delta = torch.empty_like(lse)
    tq_bound, tk_bound = _launch.loop_bound(tq), _launch.loop_bound(tk)
    _delta_kernel[(b * h, triton.cdiv(tq, bm))](out, grad, delta, *out.stride(), *grad.stride(), h, tq_bound, d,
                                                ACC=precision["ACC"], BLOCK_M=bm, BLOCK_D=bd, num_warps=warps)
    inputs = (q, k, v, grad, lse, delta)
    strides = (*q.stride(), *k.stride(), *v.stride(), *grad.stride())
    sizes = (h, tq_bound, tk_bound, d, *_scales(sm_scale))
    tiles = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages)
    _bwd_dkdv_kernel[(b * h, triton.cdiv(tk, bn))](*inputs, dk, dv, *strides, *dk.stride(), *dv.stride(), *sizes,
                                                   **precision, **tiles)
    _bwd_dq_kernel[(b * h, triton.cdiv(tq, bm))](*inputs, dq, *strides, *dq.stride(), *sizes, **precision, **tiles)


def heads_view(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, H·D] -> its [B, H, L, D] view (diffusers' `view(B, L, H, D).transpose(1, 2)`; never a copy)."""
    return x.unflatten(-1, (heads, x.shape[-1] // heads)).transpose(1, 2)


def _check_supported(d: int, dtype: torch.dtype) -> None:
    why = unsupported(d, dtype)
    if why:
        raise ValueError(why)


@_launch.on_tensor_device
def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, sm_scale: float):
    """(out [B, Lq, H·D] contiguous, lse [B·H, Lq] in log2 units) for q: [B, Lq, H·D], k, v: [B, Lk, H·D] (any
    strides); as fastdiff.ops.attention.reference with scale `sm_scale`."""
    _check_supported(q.shape[-1] // heads, q.dtype)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = flash_forward(heads_view(q, heads), heads_view(k, heads), heads_view(v, heads), heads_view(out, heads),
                        sm_scale)
    return out, lse


@_launch.on_tensor_device
def attention_backward(q, k, v, out, lse, grad, heads: int, sm_scale: float):
    """(∂q, ∂k, ∂v), each contiguous in its input's shape, from the output gradient `grad` [B, Lq, H·D]."""
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if q.numel() == 0:  # no query: nothing reaches k and v
        return dq, dk.zero_(), dv.zero_()
    views = [heads_view(x, heads) for x in (q, k, v, out, grad)]
    flash_backward(*views, lse, heads_view(dq, heads), heads_view(dk, heads), heads_view(dv, heads), sm_scale)
    return dq, dk, dv


def attention(q, k, v, heads, scale=None):
    """The forward output alone, with the positional arguments of fastdiff.ops.attention.reference."""
    return attention_forward(q, k, v, heads, 1 / math.sqrt(q.shape[-1] // heads) if scale is None else scale)[0]
