"""DDIM step (Song et al. eq. 12, guided-diffusion's ddim_sample) as rows of the one fused `sampler_step`."""
from __future__ import annotations

import numpy as np
import torch

from fastdiff.ops import common as C
from fastdiff.ops import table as T
from fastdiff.ops.sampler_step import run as run_step


def ddim_coefficients(ac, ac_prev, eta: float, xp=np):
    """(c_x, c_D, σ) of DDIM eq. 12 as an affine step x_prev = c_x·x_t + c_D·x̂0 + σz, for ᾱ_t = ac and ᾱ_prev
    (numpy arrays, or torch tensors with xp=torch): σ = η√((1−ᾱ_prev)/(1−ᾱ_t))√(1 − ᾱ_t/ᾱ_prev) (eq. 16) and ε̂
    re-derived from the (clipped) x̂0 as guided-diffusion does, ε̂ = (x_t − √ᾱ_t x̂0)/√(1−ᾱ_t), so
    c_x = √(1 − ᾱ_prev − σ²)/√(1 − ᾱ_t) (clamped at 0 under rounding) and c_D = √ᾱ_prev − c_x√ᾱ_t."""
    sigma = eta * xp.sqrt((1.0 - ac_prev) / (1.0 - ac)) * xp.sqrt(1.0 - ac / ac_prev)
    c_x = xp.sqrt(xp.clip(1.0 - ac_prev - sigma * sigma, 0.0, None)) / xp.sqrt(1.0 - ac)
    return c_x, xp.sqrt(ac_prev) - c_x * xp.sqrt(ac), sigma


def x0_columns(coefs: torch.Tensor, prediction: str):
    """(a_x, a_o) of x̂0 = a_x·x_t + a_o·out from the schedule table's x̂0 columns: ε: (1/√ᾱ, −√(1/ᾱ − 1)) (DDPM
    eq. 15 inverted); v: (√ᾱ, −√(1 − ᾱ)) (Salimans & Ho); x0: (0, 1). The columns, not ᾱ, define x̂0, so a table
    may rescale them (the diffusers adapters clip to ±r by dividing them by r)."""
    if prediction == "epsilon":
        return coefs[:, T.SQRT_RECIP_AC], -coefs[:, T.SQRT_RECIPM1_AC]
    if prediction == "v":
        return coefs[:, T.SQRT_AC], -coefs[:, T.SQRT_1M_AC]
    return torch.zeros_like(coefs[:, 0]), torch.ones_like(coefs[:, 0])


def step_rows(coefs: torch.Tensor, eta: float, prediction: str, clip_denoised: bool, guidance_scale: float):
    """The [T, STEP_NCOL] `sampler_step` table of DDIM from a [T, NCOEF] schedule table (device math, no sync)."""
    rows = coefs.new_zeros(coefs.shape[0], T.STEP_NCOL)
    c_x, c_d, sigma = ddim_coefficients(coefs[:, T.AC], coefs[:, T.AC_PREV], eta, torch)
    rows[:, T.A_X], rows[:, T.A_O] = x0_columns(coefs, prediction)
    rows[:, T.CFG_SCALE] = guidance_scale
    rows[:, T.CLIP] = 1.0 if clip_denoised else 0.0
    rows[:, T.C_X], rows[:, T.C_D] = c_x, c_d
    rows[1:, T.C_Z] = sigma[1:]  # no noise into the final sample (t = 0)
    rows[:, T.WRITE_D] = rows[:, T.WRITE_X] = -1.0
    return rows


def ddim_step(x: torch.Tensor, model_output: torch.Tensor, coefs: torch.Tensor, t, *, eta: float = 0.0,
              prediction="epsilon", clip_denoised: bool = False, model_output_uncond: torch.Tensor | None = None,
              guidance_scale: float = 1.0, noise: torch.Tensor | None = None, seed: int | torch.Tensor | None = None,
              offset: int = 0, generator: torch.Generator | None = None, return_x0: bool = False,
              backend: str | None = None):
    """One DDIM step x_t -> x_{t-1} for a batch: one `sampler_step` launch on the rows of `step_rows`.

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
    t = C.check_coefs_t(x, coefs, t)
    eta = C.check_eta(eta)
    scale = C.check_guidance_scale(guidance_scale, model_output_uncond)
    prediction = C.prediction_name(prediction)
    seed, seed_tensor = C.check_noise_args(x, noise, seed, offset, stochastic=eta > 0.0, generator=generator)
    if eta == 0.0:
        noise, seed, seed_tensor = None, -1, None
    if model_output_uncond is not None:
        C.check_model_output("model_output_uncond", model_output_uncond, x)
    rows = step_rows(coefs, eta, prediction, bool(clip_denoised), scale)
    x_prev, x0 = run_step(x, model_output, model_output_uncond, rows, t, None, 0, noise, seed, int(offset),
                           bool(return_x0), seed_tensor, backend)
    return (x_prev, x0) if return_x0 else x_prev
