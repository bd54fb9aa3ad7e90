"""AdaGN (ADM §3): out = act(GroupNorm(x; G, ε, γ, β)·(1 + scale) + shift), forward and backward.

The math mirrors csrc/include/fastdiff/groupnorm.h. Forward: (1) a split reduction, grid (N·G groups, SPLIT
slices of each group's C/G·S contiguous values), each program folding its slice block by block into a Welford
triple (count, mean, M2); SPLIT is chosen so the grid holds ~4 programs per SM of the tensors' device even at
batch 1 with few groups; (2) one program per (sample·channel, spatial block) that merges its group's SPLIT triples (Chan's formula), folds
γ, β, scale, shift into out = a·(x − mean) + b and applies SiLU. Backward: per-(channel, block) partial sums of
dz and dz·(x − mean), a handful of [N, C]-sized torch ops for the coupling terms, and one pass writing dx.
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
    xc, go = x.contiguous(), grad_out.contiguous()
    mean, rstd = mean.to(acc).contiguous(), rstd.to(acc).contiguous()
    spatial = xc.numel() // (n * c) if n * c else 0
    dx = torch.empty_like(xc)
    if xc.numel() == 0:
        z = torch.zeros((n, c), dtype=acc, device=x.device)
        return dx, torch.zeros_like(weight), torch.zeros_like(bias), z.to(x.dtype), z.to(x.dtype)
    block, warps = _block(spatial)
    nblk = triton.cdiv(spatial, block)
    tacc = _launch.acc_dtype(x.dtype)
    flags = {"HAS_SCALE": scale is not None, "HAS_SHIFT": shift is not None, "SILU": bool(silu), "BLOCK": block,
             "ACC": tacc, "num_warps": warps}
    part = torch.empty((n * c, nblk, 2), dtype=acc, device=x.device)
    _bwd_sums_kernel[(n * c, nblk)](go, xc, mean, rstd, w, b, s, sh, part, c, spatial, c // g, g, nblk, **flags)
    sums = part.sum(1).reshape(n, c, 2)
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
    _bwd_dx_kernel[(n * c, nblk)](go, xc, mean, rstd, w, b, s, sh, q, rr, dx, c, spatial, c // g, g, **flags)
    return (dx, d_gamma.to(weight.dtype), d_beta.to(bias.dtype), d_scale.to(x.dtype), d_shift.to(x.dtype))
