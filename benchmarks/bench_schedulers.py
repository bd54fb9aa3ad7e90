"""End to end: a 50-step scheduler loop, diffusers' DDIMScheduler / DDPMScheduler (provider `diffusers`) against
fastdiff's FastDDIMScheduler / FastDDPMScheduler (providers `reference`, `cpu`, `cuda`, `triton`: the backend of
its fused step), with the model replaced by a fixed output tensor so the loop times the scheduler alone
(the target: ≥ 2x DDIMScheduler's speed on CPU).

Cases, at 4x3x64x64 fp32 (a 64x64 image batch, or a 512x512 latent's size):
- ddim50_default: DDIMScheduler() as configured by default (clip_sample=True, use_clipped_model_output=False: the
  clipped x̂0 with the model's own ε, two fused calls per step in fastdiff), η = 0.
- ddim50_noclip: Stable-Diffusion-style config (scaled_linear, clip_sample=False, steps_offset=1), η = 0.
- ddim50_eta1: default config, η = 1 (noise drawn from a torch.Generator exactly as diffusers does, per step).
- ddpm50: DDPMScheduler() default (fixed_small, clip), 50 respaced steps, generator noise per step.
"""
from __future__ import annotations

import pytest
import torch

import fastdiff_bench as fb
from conftest import smoke_mode

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402

from fastdiff.adapters.diffusers import FastDDIMScheduler, FastDDPMScheduler  # noqa: E402

SHAPE = (4, 3, 64, 64)
STEPS = 50
SD_CONFIG = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False,
             "steps_offset": 1, "set_alpha_to_one": False}
#: case -> (diffusers class, fastdiff class, config, step kwargs)
CASES = {
    "ddim50_default": (DDIMScheduler, FastDDIMScheduler, {}, {"eta": 0.0}),
    "ddim50_noclip": (DDIMScheduler, FastDDIMScheduler, SD_CONFIG, {"eta": 0.0}),
    "ddim50_eta1": (DDIMScheduler, FastDDIMScheduler, {}, {"eta": 1.0}),
    "ddpm50": (DDPMScheduler, FastDDPMScheduler, {}, {}),
}


def scheduler_loop(scheduler, x_T: torch.Tensor, model_output: torch.Tensor, generator, step_kwargs: dict):
    """The pipeline loop of DDIMPipeline / DDPMPipeline with model(x, t) = model_output (a fixed tensor)."""
    x = x_T
    for t in scheduler.timesteps:
        x = scheduler.step(model_output, t, x, generator=generator, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("provider", ["diffusers", "reference", "cpu", "cuda", "triton"])
def test_scheduler_loop(benchmark, request, provider, case):
    """Time 50 scheduler steps at 4x3x64x64 fp32 (the same inputs and generator seed for every provider)."""
    device, _ = fb.runnable_or_skip(request.config, None if provider == "diffusers" else provider)
    ref_cls, fast_cls, config, step_kwargs = CASES[case]
    if provider == "diffusers":
        scheduler = ref_cls(**config)
    else:
        scheduler = fast_cls(**config)
        scheduler.backend = provider
    scheduler.set_timesteps(STEPS, device=device)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(SHAPE, generator=g).to(device)
    model_output = torch.randn(SHAPE, generator=g).to(device)
    noise_gen = torch.Generator(device=device)

    def loop():
        noise_gen.manual_seed(1)
        return scheduler_loop(scheduler, x_T, model_output, noise_gen, step_kwargs)

    run = fb.synced_or_skip(loop, device, provider)
    benchmark.group = f"{case} | {fb.shape_str(SHAPE)} | float32"
    benchmark.extra_info.update(suite="scheduler", provider=provider, case=case, shape=fb.shape_str(SHAPE),
                                dtype="float32", device=device, steps=STEPS, threads=torch.get_num_threads())
    if smoke_mode(request.config):
        benchmark(run)
        return
    fb.measure(benchmark, lambda _: run(), None, device="cpu", target_s=2.0, min_rounds=5, max_rounds=60)
