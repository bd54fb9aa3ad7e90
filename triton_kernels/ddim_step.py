"""Fused DDIM step (Song et al. eq. 12) with classifier-free guidance, x̂0 clipping and noise, in one pass."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch
from . import _sampler_math as sm


@triton.jit(do_not_specialize=["eta_hi", "eta_lo", "scale_hi", "scale_lo", "seed", "offset"])
def _ddim_step_kernel(x_ptr, mo_ptr, mo_stride, mu_ptr, mu_stride, noise_ptr, noise_stride, x_stride,
                      coefs_ptr, t_ptr, out_ptr, x0_ptr, N, M,
                      eta_hi, eta_lo, scale_hi, scale_lo, seed, offset,
                      PREDICTION: tl.constexpr, CLIP: tl.constexpr, HAS_UNCOND: tl.constexpr,
                      NOISE: tl.constexpr, STORE_X0: tl.constexpr, ACC: tl.constexpr,
                      ROWS: tl.constexpr, BLOCK_M: tl.constexpr):
    """DDIM eq. 12: x_{t-1} = √ᾱ_prev x̂0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z, σ from eq. 16 with η.

    x, out, x0: [N, M] rows; model outputs: rows of stride mo_stride / mu_stride (first M values used);
    coefs: [T, NCOEF]; t: int64 [N]. One program: ROWS samples x BLOCK_M elements.
    """
    rows, cols, row_mask, mask = sm.tile(N, M, ROWS, BLOCK_M)
    t = sm.load_t(t_ptr, rows, row_mask)
    x = sm.load_tile(x_ptr, rows, x_stride, cols, mask, ACC)
    out = sm.load_tile(mo_ptr, rows, mo_stride, cols, mask, ACC)
    if HAS_UNCOND:
        out_u = sm.load_tile(mu_ptr, rows, mu_stride, cols, mask, ACC)
        out = sm.cfg_combine(out, out_u, sm.host_scalar(scale_hi, scale_lo, ACC))
    x0 = sm.clip(sm.predict_x0(x, out, coefs_ptr, t, PREDICTION, ACC), CLIP)
    eps = sm.eps_from_x0(x, x0, coefs_ptr, t, ACC)
    sigma = sm.ddim_sigma(sm.host_scalar(eta_hi, eta_lo, ACC), coefs_ptr, t, ACC)
    x_prev = sm.ddim_mean(x0, eps, sigma, coefs_ptr, t, ACC)
    if NOISE != 0:
        z = sm.step_noise(noise_ptr, noise_stride, seed, offset, rows, M, cols, mask, NOISE, ACC)
        x_prev = x_prev + sm.nonzero_t(t, ACC) * sigma * z
    sm.store_tile(out_ptr, rows, M, cols, mask, x_prev)
    if STORE_X0:
        sm.store_tile(x0_ptr, rows, M, cols, mask, x0)


def ddim_step(x, model_output, model_output_uncond, coefs, t, eta, prediction, clip_denoised, guidance_scale,
              noise, seed, offset, return_x0):
    """One DDIM step; arguments and results exactly those of fastdiff.ops.ddim_step.reference.

    x: [N, C, ...]; model_output(_uncond): [N, C or 2C, ...]; coefs: [T, NCOEF]; t: int64 [N].
    Returns (x_{t-1} [N, C, ...], x̂0 [N, C, ...] or empty [0]).
    """
    n = x.shape[0]
    m = x[0].numel() if n else 0
    x_prev = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    x0 = torch.empty(x.shape, dtype=x.dtype, device=x.device) if return_x0 else x.new_empty(0)
    if n == 0 or m == 0:
        return x_prev, x0
    x, x_stride = _launch.rows(x)
    mo, mo_stride = _launch.rows(model_output)
    mu, mu_stride = _launch.rows(model_output_uncond) if model_output_uncond is not None else (mo, mo_stride)
    mode = _launch.noise_mode(noise, seed)
    nz, nz_stride = _launch.rows(noise) if mode == 1 else (x, x_stride)
    tiling = _launch.Tiling(n, m)
    eta_hi, eta_lo = _launch.split_float(eta)
    scale_hi, scale_lo = _launch.split_float(guidance_scale)
    _ddim_step_kernel[tiling.grid](
        x, mo, mo_stride, mu, mu_stride, nz, nz_stride, x_stride, coefs.contiguous(), t.contiguous(),
        x_prev, x0 if return_x0 else x_prev, n, m,
        eta_hi, eta_lo, scale_hi, scale_lo, max(seed, 0), offset,
        PREDICTION=prediction, CLIP=bool(clip_denoised), HAS_UNCOND=model_output_uncond is not None,
        NOISE=mode, STORE_X0=bool(return_x0), ACC=_launch.acc_dtype(x.dtype),
        ROWS=tiling.rows, BLOCK_M=tiling.block_m, num_warps=tiling.num_warps)
    return x_prev, x0
