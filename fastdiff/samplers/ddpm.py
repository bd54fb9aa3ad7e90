"""Ancestral DDPM sampling (Ho et al. Algorithm 2) on the fused `ddpm_step` op."""
from __future__ import annotations

import functools

from fastdiff.ops import common as C
from fastdiff.ops.ddpm_step import VAR_MODE, step_rows
from fastdiff.samplers._loop import consume, run_steps


def ddpm_steps(model, x, timesteps=None, extra_args=None, *, alphas_cumprod, prediction="epsilon",
               var_type="fixed_small", clip_denoised: bool = False, guidance_scale: float | None = None,
               uncond_args: dict | None = None, seed: int | None = None, generator=None, disable=None,
               backend: str | None = None, guidance=(), labels=None):
    """Generator over DDPM steps from x_T: yields {"i", "t", "x": x_{t-1}, "denoised": x̂0} per step.

    model(x, t, **extra_args) -> [N, C or 2C, ...] with t: int64 [N] model timesteps from `timesteps`
    (default all of range(T)), visited in descending order; alphas_cumprod: [T] of the trained process, respaced
    to `timesteps` as in Improved DDPM §4. Noise: Philox(seed, (i+1)<<32) in-kernel when `seed` is given,
    else torch.randn with `generator`. With guidance_scale, ε = ε_u + s(ε_c − ε_u) using model(x, t, **uncond_args).
    guidance: any of ClassifierFree / ClassifierGuidance / DiscriminatorGuidance (`fastdiff.samplers.guidance`),
    each with its weight, schedule and t interval; labels: int64 [N] classifier-guidance targets (default
    extra_args["y"]).
    """
    vt = C.var_type_code(var_type)
    rows = functools.partial(step_rows, prediction=C.prediction_name(prediction), var_type=vt,
                             clip_denoised=bool(clip_denoised), guidance_scale=1.0)
    return run_steps(rows, VAR_MODE[vt], model, x, timesteps, extra_args, alphas_cumprod=alphas_cumprod,
                     guidance_scale=guidance_scale, uncond_args=uncond_args, seed=seed, generator=generator,
                     needs_noise=True, disable=disable, desc="DDPM", backend=backend,
                     guidance=guidance, labels=labels, prediction=prediction, ddpm_var_type=var_type)


def sample_ddpm(model, x, timesteps=None, extra_args=None, callback=None, disable=None, *, alphas_cumprod,
                prediction="epsilon", var_type="fixed_small", clip_denoised: bool = False,
                guidance_scale: float | None = None, uncond_args: dict | None = None, seed: int | None = None,
                generator=None, backend: str | None = None, guidance=(), labels=None):
    """Sample x_0 from x_T: [N, C, ...] by ancestral DDPM (k-diffusion-style signature; see `ddpm_steps`).

    callback(info) receives {"i": step, "t": model timesteps, "x": x_{t-1}, "denoised": x̂0} after each step.
    """
    steps = ddpm_steps(model, x, timesteps, extra_args, alphas_cumprod=alphas_cumprod, prediction=prediction,
                       var_type=var_type, clip_denoised=clip_denoised, guidance_scale=guidance_scale,
                       uncond_args=uncond_args, seed=seed, generator=generator, disable=disable, backend=backend,
                       guidance=guidance, labels=labels)
    return consume(steps, x, callback)
