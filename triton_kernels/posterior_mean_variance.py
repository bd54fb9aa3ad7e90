"""Posterior q(x_{t-1} | x_t, x_0) mean and variance (DDPM eqs. 6-7) in one pass."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _coefs as K
from . import _launch
from . import _sampler_math as sm


@triton.jit
def _posterior_kernel(x0_ptr, x0_stride, xt_ptr, xt_stride, coefs_ptr, t_ptr, T, mean_ptr, var_ptr, logvar_ptr,
                      N, M, ACC: tl.constexpr, ROWS: tl.constexpr, BLOCK_M: tl.constexpr):
    """DDPM eqs. 6-7: μ̃_t = coef1 x_0 + coef2 x_t, plus β̃_t and clipped log β̃_t per sample.

    x_0, x_t, mean: [N, M] rows; var, log_var: [N] (written by the first column block of each row); coefs: [T, NCOEF].
    """
    rows, cols, row_mask, mask, first_col = sm.tile(N, M, ROWS, BLOCK_M)
    t = sm.load_t(t_ptr, rows, row_mask, T)
    x0 = sm.load_tile(x0_ptr, rows, x0_stride, cols, mask, ACC)
    xt = sm.load_tile(xt_ptr, rows, xt_stride, cols, mask, ACC)
    sm.store_tile(mean_ptr, rows, M, cols, mask, sm.posterior_mean(x0, xt, coefs_ptr, t, ACC))
    if first_col:
        tl.store(var_ptr + rows, sm.coef_rows(coefs_ptr, t, K.POST_VAR, ACC), mask=row_mask)
        tl.store(logvar_ptr + rows, sm.coef_rows(coefs_ptr, t, K.POST_LOGVAR, ACC), mask=row_mask)


@_launch.on_tensor_device
def posterior_mean_variance(x_start, x_t, coefs, t):
    """(mean [N, ...] in x's dtype, variance [N], log_variance [N] in fp32, fp64 for fp64 input).

    x_start, x_t: [N, ...]; coefs: [T, NCOEF]; t: int64 [N]; as fastdiff.ops.posterior_mean_variance.reference.
    """
    n = x_start.shape[0]
    m = x_start[0].numel() if n else 0
    acc = torch.float64 if x_start.dtype == torch.float64 else torch.float32
    mean = torch.empty(x_start.shape, dtype=x_start.dtype, device=x_start.device)
    var = torch.empty(n, dtype=acc, device=x_start.device)
    log_var = torch.empty(n, dtype=acc, device=x_start.device)
    if n == 0:
        return mean, var, log_var
    x0, x0_stride = _launch.rows(x_start)
    xt, xt_stride = _launch.rows(x_t)
    tiling = _launch.Tiling(n, m, x_start.dtype)
    _posterior_kernel[tiling.grid](
        x0, x0_stride, xt, xt_stride, coefs.contiguous(), t.contiguous(), coefs.shape[0], mean, var, log_var,
        n, m,
        ACC=_launch.acc_dtype(x_start.dtype), ROWS=tiling.rows, BLOCK_M=tiling.block_m,
        num_warps=tiling.num_warps)
    return mean, var, log_var
