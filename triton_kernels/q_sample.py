"""Forward-process sample q(x_t | x_0) (DDPM eq. 4) with a per-sample coefficient gather."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch
from . import _sampler_math as sm


@triton.jit
def _q_sample_kernel(x_ptr, x_stride, noise_ptr, noise_stride, coefs_ptr, t_ptr, T, out_ptr, N, M,
                     ACC: tl.constexpr, ROWS: tl.constexpr, BLOCK_M: tl.constexpr):
    """DDPM eq. 4: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε. x_0, ε, x_t: [N, M] rows; coefs: [T, NCOEF]; t: int64 [N]."""
    rows, cols, row_mask, mask, _ = sm.tile(N, M, ROWS, BLOCK_M)
    t = sm.load_t(t_ptr, rows, row_mask, T)
    x0 = sm.load_tile(x_ptr, rows, x_stride, cols, mask, ACC)
    eps = sm.load_tile(noise_ptr, rows, noise_stride, cols, mask, ACC)
    sm.store_tile(out_ptr, rows, M, cols, mask, sm.q_sample_mix(x0, eps, coefs_ptr, t, ACC))


@_launch.on_tensor_device
def q_sample(x_start, noise, coefs, t):
    """x_t for x_start, noise: [N, ...], coefs: [T, NCOEF], t: int64 [N]; as fastdiff.ops.q_sample.reference."""
    n = x_start.shape[0]
    m = x_start[0].numel() if n else 0
    out = torch.empty(x_start.shape, dtype=x_start.dtype, device=x_start.device)
    if n == 0 or m == 0:
        return out
    x, x_stride = _launch.rows(x_start)
    nz, nz_stride = _launch.rows(noise)
    tiling = _launch.Tiling(n, m, x_start.dtype)
    _q_sample_kernel[tiling.grid](
        x, x_stride, nz, nz_stride, coefs.contiguous(), t.contiguous(), coefs.shape[0], out, n, m,
        ACC=_launch.acc_dtype(x.dtype), ROWS=tiling.rows, BLOCK_M=tiling.block_m, num_warps=tiling.num_warps)
    return out
