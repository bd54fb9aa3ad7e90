"""Ancestral DDPM step (Ho et al. eq. 7 / Algorithm 2; Improved DDPM eq. 15) as rows of the one `sampler_step`."""
from __future__ import annotations

import torch

from fastdiff.ops import common as C
from fastdiff.ops import table as T
from fastdiff.ops.sampler_step import run as run_step
from fastdiff.ops.ddim_step import x0_columns

VAR_MODE = {0: 0, 1: 0, 2: 1, 3: 2}  # var_type code -> sampler_step var_mode (learned, learned_range)


def step_rows(coefs: torch.Tensor, prediction: str, var_type: int, clip_denoised: bool, guidance_scale: float):
    """The [T, STEP_NCOL] `sampler_step` table of DDPM from a [T, NCOEF] schedule table (device math, no sync):
    x_{t-1} = μ̃_t(x_t, x̂0) + [t > 0]σ_t z with μ̃_t = coef1·x̂0 + coef2·x_t (eq. 7) and log σ²_t fixed
    (small: log β̃_t clipped; large: log β_t, β̃_1 at t = 0) or learned (the op's var_mode, eq. 15 columns)."""
    rows = coefs.new_zeros(coefs.shape[0], T.STEP_NCOL)
    rows[:, T.A_X], rows[:, T.A_O] = x0_columns(coefs, prediction)
    rows[:, T.CFG_SCALE] = guidance_scale
    rows[:, T.CLIP] = 1.0 if clip_denoised else 0.0
    rows[:, T.C_X], rows[:, T.C_D] = coefs[:, T.POST_COEF2], coefs[:, T.POST_COEF1]
    if VAR_MODE[var_type]:
        rows[1:, T.C_Z] = 1.0
    else:
        log_var = coefs[:, T.FIXED_LARGE_LOGVAR if var_type == 1 else T.POST_LOGVAR]
        rows[1:, T.C_Z] = torch.exp(0.5 * log_var[1:])
    rows[:, T.LOGVAR_HI], rows[:, T.LOGVAR_LO] = coefs[:, T.LOG_BETA], coefs[:, T.POST_LOGVAR]
    rows[:, T.WRITE_D] = rows[:, T.WRITE_X] = -1.0
    return rows


def log_variance(model_output, coefs, t, var_type: int, channels: int, dtype):
    """log σ²_t of the step, broadcastable to x: [N, C, ...]; var_type as a code (`common.VAR_TYPES`);
    channels = C. Also the Σ_t of classifier guidance's mean shift."""
    g = lambda col: C.gather(coefs, t, col, model_output.dim(), dtype)  # noqa: E731
    if var_type == 0:
        return g(T.POST_LOGVAR)
    if var_type == 1:
        return g(T.FIXED_LARGE_LOGVAR)
    v = model_output[:, channels:].to(dtype)
    if var_type == 2:
        return v
    frac = (v + 1.0) / 2.0
    return frac * g(T.LOG_BETA) + (1.0 - frac) * g(T.POST_LOGVAR)


def fused(x, model_output, model_output_uncond, coefs, t, prediction: str, var_type: int, clip_denoised: bool,
          guidance_scale: float, noise, seed: int, offset: int, return_x0: bool, backend: str | None = None,
          seed_tensor=None):
    """(x_{t-1}, x̂0) of one validated DDPM step: one `sampler_step` launch, no checks and no host reads (x̂0
    empty unless return_x0; seed −1 without in-kernel noise)."""
    rows = step_rows(coefs, prediction, var_type, clip_denoised, guidance_scale)
    return run_step(x, model_output, model_output_uncond, rows, t, None, VAR_MODE[var_type], noise, seed, offset,
                     return_x0, seed_tensor, backend)


def ddpm_step(x: torch.Tensor, model_output: torch.Tensor, coefs: torch.Tensor, t, *, prediction="epsilon",
              var_type="fixed_small", clip_denoised: bool = False, model_output_uncond: torch.Tensor | None = None,
              guidance_scale: float = 1.0, noise: torch.Tensor | None = None, seed: int | torch.Tensor | None = None,
              offset: int = 0, generator: torch.Generator | None = None, return_x0: bool = False,
              backend: str | None = None):
    """One ancestral DDPM step x_t -> x_{t-1}: one `sampler_step` launch on the rows of `step_rows`.

    x: [N, C, ...]; model_output: [N, C, ...], or [N, 2C, ...] for var_type 'learned'/'learned_range';
    coefs: [T, NCOEF]; t: int64 [N]. Guidance, clipping and noise options as in `ddim_step` (seed: an int, or
    an int64 [] / [1] tensor on x's device read by the kernel, for CUDA graphs).
    Returns x_{t-1}, or (x_{t-1}, x̂0) when return_x0.
    """
    C.check_x(x)
    vt = C.var_type_code(var_type)
    learned = vt in (C.VAR_TYPES["learned"], C.VAR_TYPES["learned_range"])
    C.check_model_output("model_output", model_output, x)
    if learned and model_output.shape[1] != 2 * x.shape[1]:
        raise ValueError(f"var_type={var_type!r} needs model_output with 2C = {2 * x.shape[1]} channels "
                         f"(ε and variance), got {model_output.shape[1]}")
    t = C.check_coefs_t(x, coefs, t)
    scale = C.check_guidance_scale(guidance_scale, model_output_uncond)
    seed, seed_tensor = C.check_noise_args(x, noise, seed, offset, stochastic=True, generator=generator)
    if model_output_uncond is not None:
        C.check_model_output("model_output_uncond", model_output_uncond, x)
    x_prev, x0 = fused(x, model_output, model_output_uncond, coefs, t, C.prediction_name(prediction), vt,
                       bool(clip_denoised), scale, noise, seed, int(offset), bool(return_x0), backend, seed_tensor)
    return (x_prev, x0) if return_x0 else x_prev
