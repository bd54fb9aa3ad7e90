"""adaLN modulate (DiT §3.2, adaLN-Zero): h = residual + gate·x (gated form), out = (norm(h)·w + b)·(1 + scale)
+ shift, forward and backward. The math mirrors csrc/include/fastdiff/adaln.h.

Forward: one program per tile of ROWS rows × BLOCK_D = next_pow2(D) columns (ROWS > 1 only for short rows), so
every row is read once (x, and residual in the gated form), its statistics taken from registers, and out (and h)
written once. Rows are addressed through (batch, token) strides, so [B, L, D] views with a unit-stride last
dimension are read in place, and a per-sample argument ([B, D] / [B, 1, D]) is a token stride of 0.
Backward: grid (B, NBLK), each program walking RPT rows of one sample: ∂h per row (the row sums couple only that
row), per-token ∂scale / ∂shift / ∂gate per row, and register partials of the per-sample and column (∂w, ∂b) sums
written once per program and summed on the host side ([B·NBLK, D] each).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch
from . import _sampler_math as sm

PROGRAMS_PER_SM = 4
# fp64 rows longer than this take the plain PyTorch backward: the kernel's five fp64 partials and the row's values
# spill at BLOCK_D = 4096 even on 16 warps (make triton-check); fp64 is the checking path, not the fast one.
MAX_FP64_BWD_BLOCK_D = 2048


@triton.jit
def _adaln_fwd_kernel(x_ptr, sxb, sxl, r_ptr, srb, srl, g_ptr, sgb, sgl, s_ptr, ssb, ssl, sh_ptr, shb, shl,
                      w_ptr, b_ptr, out_ptr, h_ptr, mean_ptr, rstd_ptr, R, L, D, eps_hi, eps_lo,
                      RMS: tl.constexpr, GATED: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
                      HAS_W: tl.constexpr, HAS_B: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                      ACC: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rmask = rows < R
    bi = rows // L
    li = rows % L
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    mask = rmask[:, None] & cmask[None, :]
    c2 = cols[None, :]
    x = tl.load(x_ptr + (bi * sxb + li * sxl)[:, None] + c2, mask=mask, other=0.0).to(ACC)
    if GATED:
        res = tl.load(r_ptr + (bi * srb + li * srl)[:, None] + c2, mask=mask, other=0.0).to(ACC)
        gt = tl.load(g_ptr + (bi * sgb + li * sgl)[:, None] + c2, mask=mask, other=0.0).to(ACC)
        hs = (res + gt * x).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + rows[:, None] * D + c2, hs, mask=mask)
        h = hs.to(ACC)  # the stored (rounded) h is what is normalised, as in the reference
    else:
        h = x
    if RMS:
        mean = tl.zeros([ROWS], dtype=ACC)
        q = tl.sum(h * h, axis=1)
    else:
        mean = tl.sum(h, axis=1) / D
        c = tl.where(mask, h - mean[:, None], 0.0)
        q = tl.sum(c * c, axis=1)
    eps = sm.host_scalar(eps_hi, eps_lo, ACC)
    rstd = 1.0 / tl.sqrt(tl.maximum(q / D, 0.0) + eps)
    tl.store(mean_ptr + rows, mean, mask=rmask)
    tl.store(rstd_ptr + rows, rstd, mask=rmask)
    n = (h - mean[:, None]) * rstd[:, None]
    if HAS_W:
        n = n * tl.load(w_ptr + cols, mask=cmask, other=0.0).to(ACC)[None, :]
    if HAS_B:
        n = n + tl.load(b_ptr + cols, mask=cmask, other=0.0).to(ACC)[None, :]
    if HAS_SCALE:
        n = n * (1.0 + tl.load(s_ptr + (bi * ssb + li * ssl)[:, None] + c2, mask=mask, other=0.0).to(ACC))
    if HAS_SHIFT:
        n = n + tl.load(sh_ptr + (bi * shb + li * shl)[:, None] + c2, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + rows[:, None] * D + c2, n.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _adaln_bwd_kernel(go_ptr, sgob, sgol, h_ptr, shb, shl, gh_ptr, sghb, sghl, x_ptr, sxb, sxl, g_ptr, sgb, sgl,
                      s_ptr, ssb, ssl, w_ptr, b_ptr, mean_ptr, rstd_ptr, dh_ptr, dx_ptr, ds_ptr, dsh_ptr, dg_ptr,
                      part_ptr, L, D, RPT, NBLK, PART_STRIDE,
                      RMS: tl.constexpr, GATED: tl.constexpr, HAS_GH: tl.constexpr, HAS_SCALE: tl.constexpr,
                      HAS_SHIFT: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, TOK_SCALE: tl.constexpr,
                      TOK_SHIFT: tl.constexpr, TOK_GATE: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """Rows blk·RPT .. (blk + 1)·RPT − 1 of sample b = pid(0), blk = pid(1); partials of program p = b·NBLK + blk
    at part[k, p, :] for k = 0 ∂w, 1 ∂b, 2 ∂scale, 3 ∂shift, 4 ∂gate (PART_STRIDE = B·NBLK·D)."""
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    acc_w = tl.zeros([BLOCK_D], dtype=ACC)
    acc_b = tl.zeros([BLOCK_D], dtype=ACC)
    acc_s = tl.zeros([BLOCK_D], dtype=ACC)
    acc_sh = tl.zeros([BLOCK_D], dtype=ACC)
    acc_g = tl.zeros([BLOCK_D], dtype=ACC)
    for i in range(RPT):
        li = blk * RPT + i
        ok = li < L
        m = cmask & ok
        r = b * L + li
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(ACC) if HAS_W else tl.full([BLOCK_D], 1.0, ACC)
        bb = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(ACC) if HAS_B else tl.zeros([BLOCK_D], dtype=ACC)
        g = tl.load(go_ptr + b * sgob + li * sgol + cols, mask=m, other=0.0).to(ACC)
        h = tl.load(h_ptr + b * shb + li * shl + cols, mask=m, other=0.0).to(ACC)
        mean = tl.load(mean_ptr + r, mask=ok, other=0.0)
        rstd = tl.load(rstd_ptr + r, mask=ok, other=0.0)
        n = (h - mean) * rstd
        if HAS_SCALE:
            dy = g * (1.0 + tl.load(s_ptr + b * ssb + li * ssl + cols, mask=m, other=0.0).to(ACC))
        else:
            dy = g
        dn = dy * w
        acc_w += dy * n
        acc_b += dy
        if HAS_SCALE:
            gy = g * (n * w + bb)
            if TOK_SCALE:
                tl.store(ds_ptr + r * D + cols, gy.to(ds_ptr.dtype.element_ty), mask=m)
            else:
                acc_s += gy
        if HAS_SHIFT:
            if TOK_SHIFT:
                tl.store(dsh_ptr + r * D + cols, g.to(dsh_ptr.dtype.element_ty), mask=m)
            else:
                acc_sh += g
        m2 = tl.sum(dn * n, axis=0) / D
        if RMS:
            dh = rstd * (dn - n * m2)
        else:
            dh = rstd * (dn - tl.sum(dn, axis=0) / D - n * m2)
        if HAS_GH:
            dh += tl.load(gh_ptr + b * sghb + li * sghl + cols, mask=m, other=0.0).to(ACC)
        tl.store(dh_ptr + r * D + cols, dh.to(dh_ptr.dtype.element_ty), mask=m)
        if GATED:
            gt = tl.load(g_ptr + b * sgb + li * sgl + cols, mask=m, other=0.0).to(ACC)
            x = tl.load(x_ptr + b * sxb + li * sxl + cols, mask=m, other=0.0).to(ACC)
            tl.store(dx_ptr + r * D + cols, (dh * gt).to(dx_ptr.dtype.element_ty), mask=m)
            if TOK_GATE:
                tl.store(dg_ptr + r * D + cols, (dh * x).to(dg_ptr.dtype.element_ty), mask=m)
            else:
                acc_g += dh * x
    base = part_ptr + (b * NBLK + blk) * D + cols
    if HAS_W:
        tl.store(base, acc_w, mask=cmask)
    if HAS_B:
        tl.store(base + PART_STRIDE, acc_b, mask=cmask)
    if HAS_SCALE and not TOK_SCALE:
        tl.store(base + 2 * PART_STRIDE, acc_s, mask=cmask)
    if HAS_SHIFT and not TOK_SHIFT:
        tl.store(base + 3 * PART_STRIDE, acc_sh, mask=cmask)
    if GATED and not TOK_GATE:
        tl.store(base + 4 * PART_STRIDE, acc_g, mask=cmask)


def _view(p, tokens: bool = False):
    """(tensor, batch stride, token stride) of a [B, L, D] / [B, 1, D] / [B, D] argument with a unit-stride last
    dimension (copied if it has none); a per-sample argument has token stride 0. Absent: a dummy."""
    if p is None:
        return None, 0, 0
    if p.shape[-1] > 1 and p.stride(-1) != 1:
        p = p.contiguous()
    if tokens or (p.dim() == 3 and p.shape[1] != 1):
        return p, p.stride(0), p.stride(1)
    return p, p.stride(0), 0


def _per_token(p) -> bool:
    return p is not None and p.dim() == 3 and p.shape[1] != 1


def _warps(elems: int, dtype: torch.dtype) -> int:
    """Warps for a tile of `elems` values: ~8 per thread (4 in fp64, whose math takes register pairs), at most 16
    (32 warps leave 64 registers a thread)."""
    per_thread = 4 if dtype == torch.float64 else 8
    return max(1, min(16, triton.next_power_of_2(max(elems // (32 * per_thread), 1))))


@_launch.on_tensor_device
def adaln_modulate(x, scale, shift, weight, bias, residual, gate, rms: bool, eps: float):
    """(out, h, mean, rstd) as fastdiff.ops.adaln_modulate.reference; x: [B, L, D] with any strides."""
    bsz, length, d = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    gated = gate is not None
    out = torch.empty((bsz, length, d), dtype=x.dtype, device=x.device)
    h = torch.empty((bsz, length, d), dtype=x.dtype, device=x.device) if gated else x.new_empty(0)
    mean = torch.zeros((bsz, length), dtype=acc, device=x.device)
    rstd = torch.full((bsz, length), float(eps) ** -0.5, dtype=acc, device=x.device)
    rows = bsz * length
    if rows == 0 or d == 0:
        return out, h, mean, rstd
    xv = _view(x, True)
    rv, gv = _view(residual, True), _view(gate)
    sv, shv = _view(scale), _view(shift)
    dummy = xv[0]
    pick = lambda v: (v[0] if v[0] is not None else dummy, v[1], v[2])
    block_d = triton.next_power_of_2(d)
    tile_rows = min(max(_launch.TILE // block_d, 1), triton.next_power_of_2(rows))
    _adaln_fwd_kernel[(triton.cdiv(rows, tile_rows),)](
        *xv, *pick(rv), *pick(gv), *pick(sv), *pick(shv),
        weight if weight is not None else dummy, bias if bias is not None else dummy,
        out, h if gated else out, mean, rstd, rows, length, d, *_launch.split_float(eps),
        RMS=bool(rms), GATED=gated, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        HAS_W=weight is not None, HAS_B=bias is not None, ROWS=tile_rows, BLOCK_D=block_d,
        ACC=_launch.acc_dtype(x.dtype), num_warps=_warps(tile_rows * block_d, x.dtype))
    return out, h, mean, rstd


@_launch.on_tensor_device
def adaln_modulate_backward(grad_out, grad_h, h, x, gate, scale, shift, weight, bias, mean, rstd, rms: bool):
    """(∂h, ∂x, ∂gate, ∂scale, ∂shift, ∂w, ∂b) as fastdiff.ops.adaln_modulate.backward_reference."""
    bsz, length, d = h.shape
    if h.dtype == torch.float64 and triton.next_power_of_2(max(d, 1)) > MAX_FP64_BWD_BLOCK_D:
        from fastdiff.ops.adaln_modulate import backward_reference
        return backward_reference(grad_out, grad_h, h, x, gate, scale, shift, weight, bias, mean, rstd, rms)
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    gated = gate is not None
    dev, dt = h.device, h.dtype
    empty = h.new_empty(0)
    dh = torch.empty((bsz, length, d), dtype=dt, device=dev)
    dx = torch.empty((bsz, length, d), dtype=dt, device=dev) if gated else empty
    tok = lambda p: torch.empty((bsz, length, d), dtype=dt, device=dev) if _per_token(p) else None
    ds, dsh, dg = tok(scale), tok(shift), tok(gate)
    rows = bsz * length
    nblk = max(1, min(length, triton.cdiv(PROGRAMS_PER_SM * _launch.sm_count(dev), max(bsz, 1))))
    rpt = triton.cdiv(length, nblk) if length else 1
    nblk = triton.cdiv(length, rpt) if length else 1
    part = torch.zeros((5, bsz * nblk, d), dtype=acc, device=dev)
    if rows > 0 and d > 0:
        gov, hv = _view(grad_out, True), _view(h, True)
        has_gh = grad_h is not None and grad_h.numel() > 0
        ghv = _view(grad_h, True) if has_gh else (None, 0, 0)
        xv, gv, sv = _view(x, True) if gated else (None, 0, 0), _view(gate), _view(scale)
        dummy = hv[0]
        pick = lambda v: (v[0] if v[0] is not None else dummy, v[1], v[2])
        or_dummy = lambda t: t if t is not None else dummy
        block_d = triton.next_power_of_2(d)
        _adaln_bwd_kernel[(bsz, nblk)](
            *gov, *hv, *pick(ghv), *pick(xv), *pick(gv), *pick(sv), or_dummy(weight), or_dummy(bias),
            mean.contiguous(), rstd.contiguous(), dh, dx if gated else dh, or_dummy(ds), or_dummy(dsh), or_dummy(dg),
            part, length, d, _launch.loop_bound(rpt), nblk, bsz * nblk * d,
            RMS=bool(rms), GATED=gated, HAS_GH=has_gh, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
            HAS_W=weight is not None, HAS_B=bias is not None, TOK_SCALE=ds is not None, TOK_SHIFT=dsh is not None,
            TOK_GATE=dg is not None, BLOCK_D=block_d, ACC=_launch.acc_dtype(dt),
            num_warps=_warps(block_d, dt))
    if rows == 0 or d == 0:
        dh.zero_()
        if gated:
            dx.zero_()
        for t in (ds, dsh, dg):
            if t is not None:
                t.zero_()

    def sample_sum(k, p, tok_t):
        if p is None:
            return empty
        if tok_t is not None:
            return tok_t
        return part[k].reshape(bsz, nblk, d).sum(1).to(dt).reshape(p.shape)

    d_w = part[0].sum(0).to(dt) if weight is not None else empty
    d_b = part[1].sum(0).to(dt) if bias is not None else empty
    return dh, dx, sample_sum(4, gate, dg), sample_sum(2, scale, ds), sample_sum(3, shift, dsh), d_w, d_b
