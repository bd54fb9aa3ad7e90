"""Fused DDIM step (Song et al. eq. 12) with classifier-free guidance, x̂0 clipping and noise, in one pass."""
from __future__ import annotations

import triton
import triton.language as tl

from . import _launch
from . import _sampler_math as sm


@triton.jit(do_not_specialize=["eta_hi", "eta_lo", "scale_hi", "scale_lo", "seed", "offset"])
def _ddim_step_kernel(x_ptr, x_stride, mo_ptr, mo_stride, mu_ptr, mu_stride, noise_ptr, noise_stride,
                      coefs_ptr, t_ptr, T, out_ptr, x0_ptr, N, M,
                      eta_hi, eta_lo, scale_hi, scale_lo, seed, seed_ptr, offset,
                      PREDICTION: tl.constexpr, CLIP: tl.constexpr, HAS_UNCOND: tl.constexpr,
                      NOISE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, STORE_X0: tl.constexpr,
                      ACC: tl.constexpr,
                      ROWS: tl.constexpr, BLOCK_M: tl.constexpr):
    """DDIM eq. 12: x_{t-1} = √ᾱ_prev x̂0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z, σ from eq. 16 with η.

    x, out, x0: [N, M] rows; model outputs: rows of stride mo_stride / mu_stride (first M values used);
    coefs: [T, NCOEF]; t: int64 [N]; seed_ptr: int64 [1] device seed, read when SEED_FROM_PTR (else `seed`).
    One program: ROWS samples x BLOCK_M elements.
    """
    rows, cols, row_mask, mask, _ = sm.tile(N, M, ROWS, BLOCK_M)
    t, seed = sm.step_t_seed(t_ptr, rows, row_mask, T, seed, seed_ptr, NOISE, SEED_FROM_PTR)
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


@_launch.on_tensor_device
def ddim_step(x, model_output, model_output_uncond, coefs, t, eta, prediction, clip_denoised, guidance_scale,
              noise, seed, offset, return_x0, seed_tensor=None):
    """One DDIM step; arguments and results exactly those of fastdiff.ops.ddim_step.reference.

    x: [N, C, ...]; model_output(_uncond): [N, C or 2C, ...]; coefs: [T, NCOEF]; t: int64 [N];
    seed_tensor: None or the int64 [] / [1] device seed (then seed = -1). Returns (x_{t-1} [N, C, ...], x̂0 [N, C, ...] or empty [0]).
    """
    s = _launch.StepLaunch(x, model_output, model_output_uncond, noise, seed, return_x0, seed_tensor)
    if s.empty:
        return s.x_prev, s.x0
    seed_int, seed_ptr, seed_from_ptr = s.seed
    eta_hi, eta_lo = _launch.split_float(eta)
    scale_hi, scale_lo = _launch.split_float(guidance_scale)
    _ddim_step_kernel[s.tiling.grid](
        *s.inputs, coefs.contiguous(), t.contiguous(), coefs.shape[0], *s.outputs, s.n, s.m,
        eta_hi, eta_lo, scale_hi, scale_lo, seed_int, seed_ptr, offset,
        PREDICTION=prediction, CLIP=bool(clip_denoised), HAS_UNCOND=model_output_uncond is not None,
        NOISE=s.noise_mode, SEED_FROM_PTR=seed_from_ptr, STORE_X0=bool(return_x0), ACC=s.acc,
        ROWS=s.tiling.rows, BLOCK_M=s.tiling.block_m, num_warps=s.tiling.num_warps)
    return s.x_prev, s.x0
