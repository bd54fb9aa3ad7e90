"""AdaGN (ADM §3): out = act(GroupNorm(x; G, ε, γ, β)·(1 + scale) + shift), forward and backward.

The math mirrors csrc/include/fastdiff/groupnorm.h. Forward: (1) a split reduction, grid (N·G groups, SPLIT
slices of each group's C/G·S contiguous values), each program folding its slice block by block into a Welford
triple (count, mean, M2); SPLIT is chosen so the grid holds ~4 programs per SM of the tensors' device even at
batch 1 with few groups; (2) one program per (sample·channel, spatial block) that merges its group's SPLIT triples (Chan's formula), folds
γ, β, scale, shift into out = a·(x − mean) + b and applies SiLU. Backward: per-(channel, block) partial sums of
dz and dz·(x − mean), a handful of [N, C]-sized torch ops for the coupling terms, and one pass writing dx.

Channels-last x (channels_last / channels_last_3d, [N, S, C] in memory) is read in place and the outputs keep that
layout: (1) per-channel Welford triples over [BLOCK_S, BLOCK_C] tiles of each position slice (grid: sample·slice,
channel block; the loads are contiguous C-runs); (2) one program per (sample, group) merges its D channels × SPLIT
slices into mean / rstd, written once; (3) the apply pass over [BLOCK_S, BLOCK_C] tiles with the per-channel
affine map. The backward's sums and dx passes use the same tiles.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch
from . import _sampler_math as sm

MAX_SPLIT = 64
PROGRAMS_PER_SM = 4


@triton.jit
def _stats_kernel(x_ptr, part_ptr, L, CHUNK, ITERS, SPLIT: tl.constexpr, BLOCK: tl.constexpr,
                  ACC: tl.constexpr):
    """Welford triple of slice `pid(1)` (CHUNK = ITERS·BLOCK values) of group `pid(0)` (L contiguous values)."""
    row = tl.program_id(0).to(tl.int64)
    sp = tl.program_id(1)
    base = x_ptr + row * L
    start = sp * CHUNK
    end = tl.minimum(start + CHUNK, L)
    cnt = tl.full([], 0.0, ACC)
    mean = tl.full([], 0.0, ACC)
    m2 = tl.full([], 0.0, ACC)
    for it in range(ITERS):
        idx = start + it * BLOCK + tl.arange(0, BLOCK)
        mask = idx < end
        v = tl.load(base + idx, mask=mask, other=0.0).to(ACC)
        n_b = tl.sum(mask.to(ACC), axis=0)
        mean_b = tl.sum(v, axis=0) / tl.maximum(n_b, 1.0)
        d = tl.where(mask, v - mean_b, 0.0)
        m2_b = tl.sum(d * d, axis=0)
        tot = cnt + n_b
        delta = mean_b - mean
        fb = n_b / tl.maximum(tot, 1.0)
        mean = mean + delta * fb
        m2 = m2 + m2_b + delta * delta * cnt * fb
        cnt = tot
    out = part_ptr + (row * SPLIT + sp) * 3
    tl.store(out, cnt)
    tl.store(out + 1, mean)
    tl.store(out + 2, m2)


@triton.jit
def _group_stats(part_ptr, row, eps, SPLIT: tl.constexpr):
    """Merge a group's SPLIT Welford triples: (mean, rstd) with rstd = 1/√(M2/count + ε)."""
    ps = (row * SPLIT + tl.arange(0, SPLIT)) * 3
    pc = tl.load(part_ptr + ps)
    pm = tl.load(part_ptr + ps + 1)
    pm2 = tl.load(part_ptr + ps + 2)
    cnt = tl.sum(pc, axis=0)
    safe = tl.maximum(cnt, 1.0)
    mean = tl.sum(pc * pm, axis=0) / safe
    m2 = tl.sum(pm2 + pc * (pm - mean) * (pm - mean), axis=0)
    var = tl.maximum(m2 / safe, 0.0)
    return mean, 1.0 / tl.sqrt(var + eps)


@triton.jit
def _channel_affine(w_ptr, b_ptr, s_ptr, sh_ptr, n, c, C, rstd, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
                    ACC: tl.constexpr):
    """(a, b, 1 + scale) of out = a·(x − mean) + b: a = rstd·γ·(1 + scale), b = β·(1 + scale) + shift."""
    gamma = tl.load(w_ptr + c).to(ACC)
    beta = tl.load(b_ptr + c).to(ACC)
    s1 = 1.0 + tl.load(s_ptr + n * C + c).to(ACC) if HAS_SCALE else tl.full([], 1.0, ACC)
    b = beta * s1
    if HAS_SHIFT:
        b = b + tl.load(sh_ptr + n * C + c).to(ACC)
    return rstd * gamma * s1, b, s1


@triton.jit
def _apply_kernel(x_ptr, out_ptr, part_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, sh_ptr, C, S, D, G,
                  eps_hi, eps_lo,
                  HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr, SPLIT: tl.constexpr,
                  BLOCK: tl.constexpr, ACC: tl.constexpr):
    nc = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    n = nc // C
    c = nc % C
    row = n * G + c // D
    mean, rstd = _group_stats(part_ptr, row, sm.host_scalar(eps_hi, eps_lo, ACC), SPLIT)
    if blk == 0 and c % D == 0:
        tl.store(mean_ptr + row, mean)
        tl.store(rstd_ptr + row, rstd)
    a, b, _ = _channel_affine(w_ptr, b_ptr, s_ptr, sh_ptr, n, c, C, rstd, HAS_SCALE, HAS_SHIFT, ACC)
    idx = blk * BLOCK + tl.arange(0, BLOCK)
    mask = idx < S
    x = tl.load(x_ptr + nc * S + idx, mask=mask, other=0.0).to(ACC)
    z = a * (x - mean) + b
    if SILU:
        z = z / (1.0 + tl.exp(-z))
    tl.store(out_ptr + nc * S + idx, z.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dz(go, x, a, b, mean, SILU: tl.constexpr):
    if SILU:
        z = a * (x - mean) + b
        sig = 1.0 / (1.0 + tl.exp(-z))
        go = go * sig * (1.0 + z * (1.0 - sig))
    return go


@triton.jit
def _bwd_block(go_ptr, x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, sh_ptr, C, S, D, G,
               HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr, BLOCK: tl.constexpr,
               ACC: tl.constexpr):
    """What both backward kernels load for program (channel nc, spatial block blk): the group statistics, the
    channel's (1 + scale), x and dz = grad·act'(z) over the block (masked past S)."""
    nc = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    n = nc // C
    c = nc % C
    row = n * G + c // D
    mean = tl.load(mean_ptr + row)
    rstd = tl.load(rstd_ptr + row)
    a, b, s1 = _channel_affine(w_ptr, b_ptr, s_ptr, sh_ptr, n, c, C, rstd, HAS_SCALE, HAS_SHIFT, ACC)
    idx = blk * BLOCK + tl.arange(0, BLOCK)
    mask = idx < S
    x = tl.load(x_ptr + nc * S + idx, mask=mask, other=0.0).to(ACC)
    go = tl.load(go_ptr + nc * S + idx, mask=mask, other=0.0).to(ACC)
    return nc, blk, c, mean, rstd, s1, idx, mask, x, _dz(go, x, a, b, mean, SILU)


@triton.jit
def _bwd_sums_kernel(go_ptr, x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, sh_ptr, part_ptr, C, S, D, G, NBLK,
                     HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr, BLOCK: tl.constexpr,
                     ACC: tl.constexpr):
    """part[nc, blk] = (Σ dz, Σ dz·(x − mean)) over spatial block blk of channel nc."""
    nc, blk, c, mean, rstd, s1, idx, mask, x, dz = _bwd_block(
        go_ptr, x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, sh_ptr, C, S, D, G, HAS_SCALE, HAS_SHIFT, SILU,
        BLOCK, ACC)
    out = part_ptr + (nc * NBLK + blk) * 2
    tl.store(out, tl.sum(dz, axis=0))
    tl.store(out + 1, tl.sum(tl.where(mask, dz * (x - mean), 0.0), axis=0))


@triton.jit
def _bwd_dx_kernel(go_ptr, x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, sh_ptr, q_ptr, r_ptr, dx_ptr, C, S, D, G,
                   HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr, BLOCK: tl.constexpr,
                   ACC: tl.constexpr):
    """dx = rstd·(k·dz + q·(x − mean) + r) with k = γ·(1 + scale) and q, r per (sample, channel)."""
    nc, blk, c, mean, rstd, s1, idx, mask, x, dz = _bwd_block(
        go_ptr, x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, sh_ptr, C, S, D, G, HAS_SCALE, HAS_SHIFT, SILU,
        BLOCK, ACC)
    k = s1 * tl.load(w_ptr + c).to(ACC)
    q = tl.load(q_ptr + nc)
    r = tl.load(r_ptr + nc)
    dx = rstd * (k * dz + q * (x - mean) + r)
    tl.store(dx_ptr + nc * S + idx, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- channels-last x: [N, S, C] in memory


@triton.jit
def _stats_nsc_kernel(x_ptr, part_ptr, S, C, CHUNK, ITERS, SPLIT: tl.constexpr, BLOCK_S: tl.constexpr,
                      BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Per-channel Welford triples (count, mean, M2) of channels [pid(1)·BLOCK_C, +BLOCK_C) over position slice
    `pid(0) % SPLIT` (CHUNK = ITERS·BLOCK_S positions) of sample `pid(0) // SPLIT`: part[n, slice, c, 3]."""
    pid = tl.program_id(0).to(tl.int64)
    n = pid // SPLIT
    sp = pid % SPLIT
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    start = sp * CHUNK
    end = tl.minimum(start + CHUNK, S)
    cnt = tl.zeros([BLOCK_C], ACC)
    mean = tl.zeros([BLOCK_C], ACC)
    m2 = tl.zeros([BLOCK_C], ACC)
    for it in range(ITERS):
        ps = start + it * BLOCK_S + tl.arange(0, BLOCK_S)
        pmask = ps < end
        mask = pmask[:, None] & cmask[None, :]
        v = tl.load(x_ptr + (n * S + ps[:, None]) * C + cs[None, :], mask=mask, other=0.0).to(ACC)
        n_b = tl.sum(pmask.to(ACC), axis=0)
        mean_b = tl.sum(v, axis=0) / tl.maximum(n_b, 1.0)
        d = tl.where(mask, v - mean_b[None, :], 0.0)
        m2_b = tl.sum(d * d, axis=0)
        tot = cnt + n_b
        delta = mean_b - mean
        fb = n_b / tl.maximum(tot, 1.0)
        mean = mean + delta * fb
        m2 = m2 + m2_b + delta * delta * cnt * fb
        cnt = tot
    out = part_ptr + ((n * SPLIT + sp) * C + cs) * 3
    tl.store(out, cnt, mask=cmask)
    tl.store(out + 1, mean, mask=cmask)
    tl.store(out + 2, m2, mask=cmask)


@triton.jit
def _finalize_nsc_kernel(part_ptr, mean_ptr, rstd_ptr, C, D, G, eps_hi, eps_lo, SPLIT: tl.constexpr,
                         BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Group `pid % G` of sample `pid // G`: merge its D channels × SPLIT slices (Chan's formula); mean, rstd."""
    row = tl.program_id(0).to(tl.int64)
    n = row // G
    g = row % G
    i = tl.arange(0, BLOCK)
    mask = i < SPLIT * D
    k = i // D
    c = g * D + i % D
    ps = ((n * SPLIT + k) * C + c) * 3
    pc = tl.load(part_ptr + ps, mask=mask, other=0.0)
    pm = tl.load(part_ptr + ps + 1, mask=mask, other=0.0)
    pm2 = tl.load(part_ptr + ps + 2, mask=mask, other=0.0)
    cnt = tl.sum(pc, axis=0)
    safe = tl.maximum(cnt, 1.0)
    mean = tl.sum(pc * pm, axis=0) / safe
    m2 = tl.sum(pm2 + pc * (pm - mean) * (pm - mean), axis=0)
    var = tl.maximum(m2 / safe, 0.0)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, 1.0 / tl.sqrt(var + sm.host_scalar(eps_hi, eps_lo, ACC)))


@triton.jit
def _nsc_tile(x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, sh_ptr, S, C, D, G, HAS_SCALE: tl.constexpr,
              HAS_SHIFT: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Tile (sample pid(0), positions block pid(1), channels block pid(2)) of [N, S, C]: offsets, mask, x and the
    per-channel (mean, rstd, a, b, 1 + scale) of groupnorm.h's affine map."""
    n = tl.program_id(0).to(tl.int64)
    ps = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    c = tl.minimum(cs, C - 1)  # in-range channel for the per-channel loads of masked lanes
    mask = (ps < S)[:, None] & cmask[None, :]
    offs = (n * S + ps[:, None]) * C + cs[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    row = n * G + c // D
    mean = tl.load(mean_ptr + row)
    rstd = tl.load(rstd_ptr + row)
    a, b, s1 = _channel_affine(w_ptr, b_ptr, s_ptr, sh_ptr, n, c, C, rstd, HAS_SCALE, HAS_SHIFT, ACC)
    return n, c, offs, mask, x, mean, rstd, a, b, s1


@triton.jit
def _apply_nsc_kernel(x_ptr, out_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, sh_ptr, S, C, D, G,
                      HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr, BLOCK_S: tl.constexpr,
                      BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    n, c, offs, mask, x, mean, rstd, a, b, s1 = _nsc_tile(
        x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, sh_ptr, S, C, D, G, HAS_SCALE, HAS_SHIFT, BLOCK_S, BLOCK_C,
        ACC)
    z = a[None, :] * (x - mean[None, :]) + b[None, :]
    if SILU:
        z = z / (1.0 + tl.exp(-z))
    tl.store(out_ptr + offs, z.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_sums_nsc_kernel(go_ptr, x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, sh_ptr, part_ptr, S, C, D, G,
                         NBLK, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
                         BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """part[n, blk, c, :] = (Σ dz, Σ dz·(x − mean)) over positions block blk, per channel."""
    n, c, offs, mask, x, mean, rstd, a, b, s1 = _nsc_tile(
        x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, sh_ptr, S, C, D, G, HAS_SCALE, HAS_SHIFT, BLOCK_S, BLOCK_C,
        ACC)
    go = tl.load(go_ptr + offs, mask=mask, other=0.0).to(ACC)
    dz = _dz(go, x, a[None, :], b[None, :], mean[None, :], SILU)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    out = part_ptr + ((n * NBLK + tl.program_id(1)) * C + cs) * 2
    cmask = cs < C
    tl.store(out, tl.sum(tl.where(mask, dz, 0.0), axis=0), mask=cmask)
    tl.store(out + 1, tl.sum(tl.where(mask, dz * (x - mean[None, :]), 0.0), axis=0), mask=cmask)


@triton.jit
def _bwd_dx_nsc_kernel(go_ptr, x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, sh_ptr, q_ptr, r_ptr, dx_ptr, S, C,
                       D, G, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
                       BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """dx = rstd·(k·dz + q·(x − mean) + r) over a [BLOCK_S, BLOCK_C] tile."""
    n, c, offs, mask, x, mean, rstd, a, b, s1 = _nsc_tile(
        x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, sh_ptr, S, C, D, G, HAS_SCALE, HAS_SHIFT, BLOCK_S, BLOCK_C,
        ACC)
    go = tl.load(go_ptr + offs, mask=mask, other=0.0).to(ACC)
    dz = _dz(go, x, a[None, :], b[None, :], mean[None, :], SILU)
    k = s1 * tl.load(w_ptr + c).to(ACC)
    q = tl.load(q_ptr + n * C + c)
    r = tl.load(r_ptr + n * C + c)
    dx = rstd[None, :] * (k[None, :] * dz + q[None, :] * (x - mean[None, :]) + r[None, :])
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def channels_last(x) -> bool:
    """x is [N, S, C] in memory and not also contiguous: fastdiff.ops.adagn.memory_format's rule."""
    if x.is_contiguous():
        return False
    return ((x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
            or (x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)))


def _nsc_tiles(c: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_S, BLOCK_C, num_warps) of the [N, S, C] kernels: C-runs of up to 64 channels (128 bytes in fp16),
    2048 values a tile on 4 warps (16 a thread); 8 warps in fp64, whose register pairs spilled the statistics
    kernel's three running vectors on sm_90 at 4 (scripts/triton_check.py)."""
    block_c = min(triton.next_power_of_2(max(c, 1)), 64)
    return 2048 // block_c, block_c, 8 if dtype == torch.float64 else 4


def _adagn_nsc(x, w, b, s, sh, scale, shift, g, eps, silu, acc):
    n, c = x.shape[0], x.shape[1]
    spatial = x.numel() // (n * c)
    out = torch.empty_like(x)  # preserves channels_last(_3d)
    mean = torch.empty((n, g), dtype=acc, device=x.device)
    rstd = torch.empty((n, g), dtype=acc, device=x.device)
    tacc = _launch.acc_dtype(x.dtype)
    block_s, block_c, warps = _nsc_tiles(c, x.dtype)
    cblocks = triton.cdiv(c, block_c)
    sblocks = triton.cdiv(spatial, block_s)
    programs = PROGRAMS_PER_SM * _launch.sm_count(x.device)
    split = min(triton.next_power_of_2(triton.cdiv(programs, n * cblocks)), MAX_SPLIT,
                triton.next_power_of_2(sblocks))
    chunk = triton.cdiv(sblocks, split) * block_s
    part = torch.empty((n, split, c, 3), dtype=acc, device=x.device)
    _stats_nsc_kernel[(n * split, cblocks)](x, part, spatial, c, chunk, _launch.loop_bound(chunk // block_s),
                                            SPLIT=split, BLOCK_S=block_s, BLOCK_C=block_c, ACC=tacc,
                                            num_warps=warps)
    d = c // g
    _finalize_nsc_kernel[(n * g,)](part, mean, rstd, c, d, g, *_launch.split_float(eps), SPLIT=split,
                                   BLOCK=triton.next_power_of_2(split * d), ACC=tacc)
    _apply_nsc_kernel[(n, sblocks, cblocks)](
        x, out, mean, rstd, w, b, s, sh, spatial, c, d, g, HAS_SCALE=scale is not None,
        HAS_SHIFT=shift is not None, SILU=bool(silu), BLOCK_S=block_s, BLOCK_C=block_c, ACC=tacc, num_warps=warps)
    return out, mean, rstd


def _block(s: int) -> tuple[int, int]:
    block = min(triton.next_power_of_2(max(s, 1)), _launch.MAX_BLOCK_M)
    return block, 4 if block >= 512 else 1


def _params(x, weight, bias, scale, shift):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w, b = weight.to(acc).contiguous(), bias.to(acc).contiguous()
    s = scale.to(acc).contiguous() if scale is not None else w
    sh = shift.to(acc).contiguous() if shift is not None else w
    return acc, w, b, s, sh


@_launch.on_tensor_device
def adagn(x, weight, bias, scale, shift, num_groups: int, eps: float, silu: bool):
    """(out, mean, rstd) as fastdiff.ops.adagn.reference; x: [N, C, *spatial] in any layout."""
    n, c = x.shape[0], x.shape[1]
    g = num_groups
    acc, w, b, s, sh = _params(x, weight, bias, scale, shift)
    if channels_last(x) and x.numel() > 0:
        return _adagn_nsc(x, w, b, s, sh, scale, shift, g, eps, silu, acc)
    xc = x.contiguous()
    out = torch.empty_like(xc)
    mean = torch.zeros((n, g), dtype=acc, device=x.device)
    rstd = torch.full((n, g), float(eps) ** -0.5, dtype=acc, device=x.device)
    if xc.numel() == 0:
        return out, mean, rstd
    spatial = xc.numel() // (n * c)
    length = (c // g) * spatial
    block, warps = _block(length)
    blocks = triton.cdiv(length, block)
    programs = PROGRAMS_PER_SM * _launch.sm_count(x.device)
    split = min(triton.next_power_of_2(triton.cdiv(programs, n * g)), MAX_SPLIT,
                triton.next_power_of_2(blocks))
    chunk = triton.cdiv(blocks, split) * block
    part = torch.empty((n * g, split, 3), dtype=acc, device=x.device)
    tacc = _launch.acc_dtype(x.dtype)
    _stats_kernel[(n * g, split)](xc, part, length, chunk, _launch.loop_bound(chunk // block), SPLIT=split,
                                  BLOCK=block, ACC=tacc, num_warps=warps)
    sblock, swarps = _block(spatial)
    _apply_kernel[(n * c, triton.cdiv(spatial, sblock))](
        xc, out, part, mean, rstd, w, b, s, sh, c, spatial, c // g, g, *_launch.split_float(eps),
        HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, SILU=bool(silu), SPLIT=split, BLOCK=sblock,
        ACC=tacc, num_warps=swarps)
    return out, mean, rstd


@_launch.on_tensor_device
def adagn_backward(grad_out, x, weight, bias, scale, shift, mean, rstd, num_groups: int, silu: bool):
    """(dx, dγ, dβ, dscale, dshift) as fastdiff.ops.adagn.backward_reference."""
    n, c = x.shape[0], x.shape[1]
    g = num_groups
    acc, w, b, s, sh = _params(x, weight, bias, scale, shift)
    nsc = channels_last(x) and x.numel() > 0
    fmt = (torch.channels_last if x.dim() == 4 else torch.channels_last_3d) if nsc else torch.contiguous_format
    xc, go = x.contiguous(memory_format=fmt), grad_out.contiguous(memory_format=fmt)
    mean, rstd = mean.to(acc).contiguous(), rstd.to(acc).contiguous()
    spatial = xc.numel() // (n * c) if n * c else 0
    dx = torch.empty_like(xc)
    if xc.numel() == 0:
        z = torch.zeros((n, c), dtype=acc, device=x.device)
        return dx, torch.zeros_like(weight), torch.zeros_like(bias), z.to(x.dtype), z.to(x.dtype)
    tacc = _launch.acc_dtype(x.dtype)
    if nsc:
        block_s, block_c, warps = _nsc_tiles(c, x.dtype)
        nblk = triton.cdiv(spatial, block_s)
        grid = (n, nblk, triton.cdiv(c, block_c))
        flags = {"HAS_SCALE": scale is not None, "HAS_SHIFT": shift is not None, "SILU": bool(silu),
                 "BLOCK_S": block_s, "BLOCK_C": block_c, "ACC": tacc, "num_warps": warps}
        part = torch.empty((n, nblk, c, 2), dtype=acc, device=x.device)
        _bwd_sums_nsc_kernel[grid](go, xc, mean, rstd, w, b, s, sh, part, spatial, c, c // g, g, nblk, **flags)
        dx_kernel = _bwd_dx_nsc_kernel
        dx_args = (spatial, c, c // g, g)
    else:
        block, warps = _block(spatial)
        nblk = triton.cdiv(spatial, block)
        grid = (n * c, nblk)
        flags = {"HAS_SCALE": scale is not None, "HAS_SHIFT": shift is not None, "SILU": bool(silu),
                 "BLOCK": block, "ACC": tacc, "num_warps": warps}
        part = torch.empty((n, c, nblk, 2), dtype=acc, device=x.device)
        _bwd_sums_kernel[grid](go, xc, mean, rstd, w, b, s, sh, part, c, spatial, c // g, g, nblk, **flags)
        part = part.transpose(1, 2)  # [N, nblk, C, 2] like the channels-last sums
        dx_kernel = _bwd_dx_kernel
        dx_args = (c, spatial, c // g, g)
    sums = part.sum(1)  # [N, C, 2]
    sdz, sdzc = sums[..., 0], sums[..., 1]
    r = rstd.repeat_interleave(c // g, dim=1)  # [N, C]
    s1 = (1 + s) if scale is not None else torch.ones_like(sdz)
    xhat_dz = r * sdzc
    k = s1 * w
    # groupnorm.h: channel_grads, group_k, dx_affine
    d_scale, d_shift = w * xhat_dz + b * sdz, sdz
    d_gamma, d_beta = (s1 * xhat_dz).sum(0), (s1 * sdz).sum(0)
    count = (c // g) * spatial
    m1 = (k * sdz).reshape(n, g, -1).sum(-1) / count
    m2 = (k * r * sdzc).reshape(n, g, -1).sum(-1) / count
    q = (-rstd * m2).repeat_interleave(c // g, dim=1).contiguous()
    rr = (-m1).repeat_interleave(c // g, dim=1).contiguous()
    dx_kernel[grid](go, xc, mean, rstd, w, b, s, sh, q, rr, dx, *dx_args, **flags)
    return (dx, d_gamma.to(weight.dtype), d_beta.to(bias.dtype), d_scale.to(x.dtype), d_shift.to(x.dtype))
