"""Fused DDIM step (Song et al. eq. 12, guided-diffusion's ddim_sample) with CFG, clipping and noise."""
from __future__ import annotations

import torch

from fastdiff.ops import backend as _backend
from fastdiff.ops import common as C
from fastdiff.ops import table as T


def reference(x, model_output, model_output_uncond, coefs, t, eta: float, prediction: int, clip_denoised: bool,
              guidance_scale: float, noise, seed: int, offset: int, return_x0: bool, seed_tensor=None):
    """x_{t-1} = √ᾱ_prev x̂0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z, σ = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev).

    x: [N, C, ...]; model_output(_uncond): [N, C or 2C, ...] (extra variance channels ignored);
    coefs: [T, NCOEF]; t: int64 [N] row indices. ε̂ is re-derived from the (clipped) x̂0 as guided-diffusion
    does. z: `noise` [N, C, ...], or Philox(seed, offset + flat index) keyed by the int `seed` (>= 0) or by the
    int64 [] / [1] tensor `seed_tensor` (then seed = -1); no noise term when neither. Returns (x_{t-1}, x̂0)
    with x̂0 empty unless return_x0.
    """
    acc = C.acc_dtype(x.dtype)
    g = lambda col: C.gather(coefs, t, col, x.dim(), acc)  # noqa: E731
    xf = x.to(acc)
    out = C.guided_output(model_output, model_output_uncond, guidance_scale, x.shape[1], acc)
    x0 = C.predict_x0(prediction, xf, out, coefs, t, acc)
    if clip_denoised:
        x0 = x0.clamp(-1.0, 1.0)
    eps = (g(T.SQRT_RECIP_AC) * xf - x0) / g(T.SQRT_RECIPM1_AC)
    ac, ac_prev = g(T.AC), g(T.AC_PREV)
    sigma = eta * torch.sqrt((1.0 - ac_prev) / (1.0 - ac)) * torch.sqrt(1.0 - ac / ac_prev)
    x_prev = x0 * torch.sqrt(ac_prev) + torch.sqrt((1.0 - ac_prev - sigma * sigma).clamp_min(0.0)) * eps
    z = C.step_noise(x, noise, seed, offset, acc, seed_tensor)
    if z is not None:
        x_prev = x_prev + (t != 0).to(acc).reshape_as(sigma) * sigma * z
    x0_out = x0.to(x.dtype) if return_x0 else x.new_empty(0)
    return x_prev.to(x.dtype), x0_out


def ddim_step(x: torch.Tensor, model_output: torch.Tensor, coefs: torch.Tensor, t, *, eta: float = 0.0,
              prediction="epsilon", clip_denoised: bool = False, model_output_uncond: torch.Tensor | None = None,
              guidance_scale: float = 1.0, noise: torch.Tensor | None = None, seed: int | torch.Tensor | None = None,
              offset: int = 0, generator: torch.Generator | None = None, return_x0: bool = False,
              backend: str | None = None):
    """One DDIM step x_t -> x_{t-1} for a batch, fused into one kernel.

    x: [N, C, ...]; model_output: [N, C or 2C, ...] (ε, x0 or v per `prediction`); coefs: [T, NCOEF] table of
    the (respaced) schedule (`fastdiff.ops.step_table`); t: int64 [N] row indices (or an int).
    With `model_output_uncond`, ε = ε_u + guidance_scale·(ε_c − ε_u). Noise (η > 0) comes from `noise`, or from
    Philox(seed, offset + flat index); with neither, a seed is drawn from `generator`. seed: an int in
    [0, 2**63), or an int64 tensor of shape [] or [1] on x's device that the kernel reads from device memory
    (so a CUDA graph captured with it replays with the value the tensor holds at replay; offset stays fixed).
    Returns x_{t-1}, or (x_{t-1}, x̂0) when return_x0.
    """
    C.check_x(x)
    C.check_model_output("model_output", model_output, x)
    if model_output_uncond is not None:
        C.check_model_output("model_output_uncond", model_output_uncond, x)
    t = C.check_coefs_t(x, coefs, t)
    eta = C.check_eta(eta)
    scale = C.check_guidance_scale(guidance_scale, model_output_uncond)
    pred = C.prediction_code(prediction)
    seed, seed_tensor = C.check_noise_args(x, noise, seed, offset, stochastic=eta > 0.0, generator=generator)
    if eta == 0.0:
        noise, seed, seed_tensor = None, -1, None
    impl = _backend.implementation("ddim_step", _backend.resolve("ddim_step", x.device, backend=backend), reference)
    x_prev, x0 = impl(x, model_output, model_output_uncond, coefs, t, eta, pred, bool(clip_denoised), scale,
                      noise, seed, int(offset), bool(return_x0), seed_tensor)
    return (x_prev, x0) if return_x0 else x_prev
