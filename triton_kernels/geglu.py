"""GEGLU (Shazeer 2020, eq. 5): out = h·GELU(g) with (h, g) = x.chunk(2, dim=-1), forward and backward.

The math mirrors csrc/include/fastdiff/gelu.h: GELU(g) = ½g(1 + erf(g/√2)), or for approximate="tanh"
g·σ(2u) with u = √(2/π)(g + 0.044715g³) (= ½g(1 + tanh u)); GELU'(g) = Φ(g) + g·φ(g), or s + 2g·s(1 − s)·u'
with s = σ(2u) and 1 − s = e^(−2u)·s (no cancellation). erf is Triton's (libdevice on a GPU, numpy's in the
interpreter); exp is tl.exp with its argument clamped so e^(−2u)·s is never inf·0.

x is read as R rows of 2F values with one row stride (_launch.rows: a Linear's output or a row-strided view in
place), tiled [ROWS, BLOCK_F] over (rows, value columns) on a 1-D grid (_launch.Tiling); the output [R, F] and
the gradient [R, 2F] are contiguous.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch
from . import _sampler_math as sm


@triton.jit
def _c(value: tl.constexpr, ACC: tl.constexpr):
    """A constant in the accumulation dtype (a bare literal would be fp32, and round fp64 math)."""
    return tl.full([], value, ACC)


@triton.jit
def _gelu_parts(g, TANH: tl.constexpr, ACC: tl.constexpr, EXP_MAX: tl.constexpr):
    """(GELU(g), GELU'(g)) in ACC."""
    if TANH:
        u = _c(0.7978845608028654, ACC) * (g + _c(0.044715, ACC) * g * g * g)
        e = tl.exp(tl.minimum(_c(-2.0, ACC) * u, _c(EXP_MAX, ACC)))
        s = 1.0 / (1.0 + e)
        gc = tl.minimum(tl.maximum(g, -20.0), 20.0)  # gelu.h: s(1 − s) < e^-600 beyond, and g³ would overflow
        du = _c(0.7978845608028654, ACC) * (1.0 + _c(3 * 0.044715, ACC) * gc * gc)
        return g * s, s + 2.0 * gc * s * (e * s) * du
    else:
        cdf = 0.5 * (1.0 + tl.erf(g * _c(0.7071067811865476, ACC)))
        pdf = _c(0.3989422804014327, ACC) * tl.exp(-0.5 * g * g)
        return g * cdf, cdf + g * pdf


@triton.jit
def _gelu(g, TANH: tl.constexpr, ACC: tl.constexpr, EXP_MAX: tl.constexpr):
    if TANH:
        u = _c(0.7978845608028654, ACC) * (g + _c(0.044715, ACC) * g * g * g)
        return g / (1.0 + tl.exp(tl.minimum(_c(-2.0, ACC) * u, _c(EXP_MAX, ACC))))
    else:
        return 0.5 * g * (1.0 + tl.erf(g * _c(0.7071067811865476, ACC)))


@triton.jit
def _geglu_kernel(x_ptr, out_ptr, R, F, x_row_stride, TANH: tl.constexpr, ROWS: tl.constexpr,
                  BLOCK_F: tl.constexpr, ACC: tl.constexpr, EXP_MAX: tl.constexpr):
    rows, cols, _, mask, _ = sm.tile(R, F, ROWS, BLOCK_F)
    h = sm.load_tile(x_ptr, rows, x_row_stride, cols, mask, ACC)
    g = sm.load_tile(x_ptr + F, rows, x_row_stride, cols, mask, ACC)
    sm.store_tile(out_ptr, rows, F, cols, mask, h * _gelu(g, TANH, ACC, EXP_MAX))


@triton.jit
def _geglu_bwd_kernel(dy_ptr, x_ptr, dx_ptr, R, F, x_row_stride, TANH: tl.constexpr, ROWS: tl.constexpr,
                      BLOCK_F: tl.constexpr, ACC: tl.constexpr, EXP_MAX: tl.constexpr):
    rows, cols, _, mask, _ = sm.tile(R, F, ROWS, BLOCK_F)
    dy = sm.load_tile(dy_ptr, rows, F, cols, mask, ACC)
    h = sm.load_tile(x_ptr, rows, x_row_stride, cols, mask, ACC)
    g = sm.load_tile(x_ptr + F, rows, x_row_stride, cols, mask, ACC)
    act, grad = _gelu_parts(g, TANH, ACC, EXP_MAX)
    sm.store_tile(dx_ptr, rows, 2 * F, cols, mask, dy * act)
    sm.store_tile(dx_ptr + F, rows, 2 * F, cols, mask, dy * h * grad)


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """x [..., 2F] as (R rows of 2F values with unit element stride, row stride, R)."""
    two_f = x.shape[-1]
    rows = x.numel() // two_f if two_f else 0
    x2 = x.reshape(rows, two_f)  # a view when the leading dims collapse
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    return x2, x2.stride(0), rows


def _flags(x: torch.Tensor, approximate: str, tiling: _launch.Tiling) -> dict:
    warps = tiling.num_warps
    if x.dtype == torch.float64:
        # libdevice's fp64 erf at 4 unaligned values per thread spilled 8 B on sm_80 (make triton-check): 2 each
        warps = max(warps, tiling.rows * tiling.block_m // 64)
    return {"TANH": approximate == "tanh", "ACC": _launch.acc_dtype(x.dtype),
            "EXP_MAX": 700.0 if x.dtype == torch.float64 else 80.0, "ROWS": tiling.rows, "BLOCK_F": tiling.block_m,
            "num_warps": warps}


@_launch.on_tensor_device
def geglu(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """x[..., :F]·GELU(x[..., F:]) as fastdiff.ops.geglu.reference; x: [..., 2F] in any layout."""
    f = x.shape[-1] // 2
    out = x.new_empty(x.shape[:-1] + (f,))
    if out.numel() == 0:
        return out
    x2, stride, rows = _rows(x)
    tiling = _launch.Tiling(rows, f, x.dtype)
    _geglu_kernel[tiling.grid](x2, out, rows, f, stride, **_flags(x, approximate, tiling))
    return out


@_launch.on_tensor_device
def geglu_backward(grad_out: torch.Tensor, x: torch.Tensor, approximate: str) -> torch.Tensor:
    """∂x [..., 2F] (contiguous) as fastdiff.ops.geglu.backward_reference."""
    f = x.shape[-1] // 2
    dx = x.new_empty(x.shape)
    if grad_out.numel() == 0:
        return dx.zero_()
    x2, stride, rows = _rows(x)
    dy = grad_out.reshape(rows, f).contiguous()
    tiling = _launch.Tiling(rows, f, x.dtype)
    _geglu_bwd_kernel[tiling.grid](dy, x2, dx, rows, f, stride, **_flags(x, approximate, tiling))
    return dx
