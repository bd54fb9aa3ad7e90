"""DDIM sampling (Song et al. eq. 12, with η) on the fused `ddim_step` op; strided/respaced timesteps."""
from __future__ import annotations

import functools

from fastdiff.ops import common as C
from fastdiff.ops.ddim_step import step_rows
from fastdiff.samplers._loop import consume, run_steps


def ddim_steps(model, x, timesteps=None, extra_args=None, *, alphas_cumprod, eta: float = 0.0,
               prediction="epsilon", clip_denoised: bool = False, guidance_scale: float | None = None,
               uncond_args: dict | None = None, seed: int | None = None, generator=None, disable=None,
               backend: str | None = None, guidance=(), labels=None):
    """Generator over DDIM steps from x_T: yields {"i", "t", "x": x_{t-1}, "denoised": x̂0} per step.

    Arguments as in `fastdiff.samplers.ddpm_steps`; η = 0 is deterministic (no noise is drawn), η = 1 is
    DDPM-like. Extra variance channels of the model output are ignored.
    """
    eta = C.check_eta(eta)
    rows = functools.partial(step_rows, eta=eta, prediction=C.prediction_name(prediction),
                             clip_denoised=bool(clip_denoised), guidance_scale=1.0)
    return run_steps(rows, 0, model, x, timesteps, extra_args, alphas_cumprod=alphas_cumprod,
                     guidance_scale=guidance_scale, uncond_args=uncond_args, seed=seed if eta > 0 else None,
                     generator=generator, needs_noise=eta > 0, disable=disable, desc="DDIM", backend=backend,
                     guidance=guidance, labels=labels, prediction=prediction)


def sample_ddim(model, x, timesteps=None, extra_args=None, callback=None, disable=None, *, alphas_cumprod,
                eta: float = 0.0, prediction="epsilon", clip_denoised: bool = False,
                guidance_scale: float | None = None, uncond_args: dict | None = None, seed: int | None = None,
                generator=None, backend: str | None = None, guidance=(), labels=None):
    """Sample x_0 from x_T: [N, C, ...] by DDIM over `timesteps` (e.g. range(0, 1000, 20) for DDIM-50).

    callback(info) receives {"i": step, "t": model timesteps, "x": x_{t-1}, "denoised": x̂0} after each step.
    """
    steps = ddim_steps(model, x, timesteps, extra_args, alphas_cumprod=alphas_cumprod, eta=eta,
                       prediction=prediction, clip_denoised=clip_denoised, guidance_scale=guidance_scale,
                       uncond_args=uncond_args, seed=seed, generator=generator, disable=disable, backend=backend,
                       guidance=guidance, labels=labels)
    return consume(steps, x, callback)
