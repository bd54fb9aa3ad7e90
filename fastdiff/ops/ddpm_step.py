"""Fused DDPM ancestral step (Ho et al. eq. 7 / Algorithm 2; Improved DDPM eq. 15) with CFG, clipping and noise."""
from __future__ import annotations

import torch

from fastdiff.ops import backend as _backend
from fastdiff.ops import common as C
from fastdiff.ops import table as T


def reference(x, model_output, model_output_uncond, coefs, t, prediction: int, var_type: int, clip_denoised: bool,
              guidance_scale: float, noise, seed: int, offset: int, return_x0: bool, seed_tensor=None):
    """x_{t-1} = μ̃_t(x_t, x̂0) + [t > 0] exp(½ log σ²_t) z, with μ̃_t = coef1 x̂0 + coef2 x_t (DDPM eq. 7).

    log σ²_t: fixed_small = log β̃_t (clipped), fixed_large = log β_t (β̃_1 at t = 0), learned = v,
    learned_range = frac·log β_t + (1 − frac)·log β̃_t with frac = (v + 1)/2 (Improved DDPM eq. 15), where
    v are model_output's channels C..2C (taken from the conditional output under guidance).
    Shapes and the noise (noise / seed / seed_tensor) as in ddim_step's reference. Returns (x_{t-1}, x̂0) with
    x̂0 empty unless return_x0.
    """
    acc = C.acc_dtype(x.dtype)
    g = lambda col: C.gather(coefs, t, col, x.dim(), acc)  # noqa: E731
    xf = x.to(acc)
    channels = x.shape[1]
    out = C.guided_output(model_output, model_output_uncond, guidance_scale, channels, acc)
    x0 = C.predict_x0(prediction, xf, out, coefs, t, acc)
    if clip_denoised:
        x0 = x0.clamp(-1.0, 1.0)
    mean = g(T.POST_COEF1) * x0 + g(T.POST_COEF2) * xf
    log_var = log_variance(model_output, coefs, t, var_type, channels, acc)
    z = C.step_noise(x, noise, seed, offset, acc, seed_tensor)
    x_prev = mean
    if z is not None:
        nonzero = (t != 0).to(acc).reshape(-1, *([1] * (x.dim() - 1)))
        x_prev = mean + nonzero * torch.exp(0.5 * log_var) * z
    x0_out = x0.to(x.dtype) if return_x0 else x.new_empty(0)
    return x_prev.to(x.dtype), x0_out


def log_variance(model_output, coefs, t, var_type: int, channels: int, dtype):
    """log σ²_t of the step (see `reference`), broadcastable to x: [N, C, ...]; var_type as a code
    (`common.VAR_TYPES`); channels = C. Also the Σ_t of classifier guidance's mean shift."""
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


def ddpm_step(x: torch.Tensor, model_output: torch.Tensor, coefs: torch.Tensor, t, *, prediction="epsilon",
              var_type="fixed_small", clip_denoised: bool = False, model_output_uncond: torch.Tensor | None = None,
              guidance_scale: float = 1.0, noise: torch.Tensor | None = None, seed: int | torch.Tensor | None = None,
              offset: int = 0, generator: torch.Generator | None = None, return_x0: bool = False,
              backend: str | None = None):
    """One ancestral DDPM step x_t -> x_{t-1}, fused into one kernel.

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
    if model_output_uncond is not None:
        C.check_model_output("model_output_uncond", model_output_uncond, x)
    t = C.check_coefs_t(x, coefs, t)
    scale = C.check_guidance_scale(guidance_scale, model_output_uncond)
    pred = C.prediction_code(prediction)
    seed, seed_tensor = C.check_noise_args(x, noise, seed, offset, stochastic=True, generator=generator)
    impl = _backend.implementation("ddpm_step", _backend.resolve("ddpm_step", x.device, backend=backend), reference)
    x_prev, x0 = impl(x, model_output, model_output_uncond, coefs, t, pred, vt, bool(clip_denoised), scale,
                      noise, seed, int(offset), bool(return_x0), seed_tensor)
    return (x_prev, x0) if return_x0 else x_prev
