"""Fused ancestral DDPM step (Ho et al. eq. 7 / Algorithm 2; Improved DDPM eq. 15) with CFG, clipping and noise."""
from __future__ import annotations

import triton
import triton.language as tl

from . import _launch
from . import _sampler_math as sm


@triton.jit(do_not_specialize=["scale_hi", "scale_lo", "seed", "offset"])
def _ddpm_step_kernel(x_ptr, x_stride, mo_ptr, mo_stride, mu_ptr, mu_stride, noise_ptr, noise_stride,
                      coefs_ptr, t_ptr, T, out_ptr, x0_ptr, N, M,
                      scale_hi, scale_lo, seed, seed_ptr, offset,
                      PREDICTION: tl.constexpr, VAR_TYPE: tl.constexpr, CLIP: tl.constexpr,
                      HAS_UNCOND: tl.constexpr, NOISE: tl.constexpr, SEED_FROM_PTR: tl.constexpr,
                      STORE_X0: tl.constexpr, ACC: tl.constexpr,
                      ROWS: tl.constexpr, BLOCK_M: tl.constexpr):
    """DDPM eq. 7: x_{t-1} = μ̃_t(x_t, x̂0) + [t > 0] exp(½ log σ²_t) z, log σ²_t per Improved DDPM eq. 15.

    x, out, x0: [N, M] rows; model outputs: rows of stride mo_stride / mu_stride, ε in the first M values
    and (learned variances) v in the next M of the conditional output; coefs: [T, NCOEF]; t: int64 [N];
    seed_ptr: int64 [1] device seed, read when SEED_FROM_PTR (else `seed`).
    """
    rows, cols, row_mask, mask, _ = sm.tile(N, M, ROWS, BLOCK_M)
    t, seed = sm.step_t_seed(t_ptr, rows, row_mask, T, seed, seed_ptr, NOISE, SEED_FROM_PTR)
    x = sm.load_tile(x_ptr, rows, x_stride, cols, mask, ACC)
    out = sm.load_tile(mo_ptr, rows, mo_stride, cols, mask, ACC)
    if HAS_UNCOND:
        out_u = sm.load_tile(mu_ptr, rows, mu_stride, cols, mask, ACC)
        out = sm.cfg_combine(out, out_u, sm.host_scalar(scale_hi, scale_lo, ACC))
    x0 = sm.clip(sm.predict_x0(x, out, coefs_ptr, t, PREDICTION, ACC), CLIP)
    x_prev = sm.posterior_mean(x0, x, coefs_ptr, t, ACC)
    if NOISE != 0:
        if VAR_TYPE >= 2:  # learned variances: model_output's values M..2M of each row
            v = sm.load_tile(mo_ptr + M, rows, mo_stride, cols, mask, ACC)
        else:
            v = x  # unused by the fixed variances
        log_var = sm.ddpm_log_variance(v, coefs_ptr, t, VAR_TYPE, ACC)
        z = sm.step_noise(noise_ptr, noise_stride, seed, offset, rows, M, cols, mask, NOISE, ACC)
        x_prev = x_prev + sm.nonzero_t(t, ACC) * tl.exp(0.5 * log_var) * z
    sm.store_tile(out_ptr, rows, M, cols, mask, x_prev)
    if STORE_X0:
        sm.store_tile(x0_ptr, rows, M, cols, mask, x0)


@_launch.on_tensor_device
def ddpm_step(x, model_output, model_output_uncond, coefs, t, prediction, var_type, clip_denoised, guidance_scale,
              noise, seed, offset, return_x0, seed_tensor=None):
    """One ancestral DDPM step; arguments and results exactly those of fastdiff.ops.ddpm_step.reference.

    x: [N, C, ...]; model_output: [N, C or 2C, ...] (2C for var_type 2/3); model_output_uncond: [N, C or 2C, ...];
    coefs: [T, NCOEF]; t: int64 [N]; seed_tensor: None or the int64 [] / [1] device seed (then seed = -1).
    Returns (x_{t-1} [N, C, ...], x̂0 [N, C, ...] or empty [0]).
    """
    s = _launch.StepLaunch(x, model_output, model_output_uncond, noise, seed, return_x0, seed_tensor)
    if s.empty:
        return s.x_prev, s.x0
    seed_int, seed_ptr, seed_from_ptr = s.seed
    scale_hi, scale_lo = _launch.split_float(guidance_scale)
    _ddpm_step_kernel[s.tiling.grid](
        *s.inputs, coefs.contiguous(), t.contiguous(), coefs.shape[0], *s.outputs, s.n, s.m,
        scale_hi, scale_lo, seed_int, seed_ptr, offset,
        PREDICTION=prediction, VAR_TYPE=var_type, CLIP=bool(clip_denoised),
        HAS_UNCOND=model_output_uncond is not None, NOISE=s.noise_mode, SEED_FROM_PTR=seed_from_ptr,
        STORE_X0=bool(return_x0), ACC=s.acc, ROWS=s.tiling.rows, BLOCK_M=s.tiling.block_m, num_warps=s.tiling.num_warps)
    return s.x_prev, s.x0
