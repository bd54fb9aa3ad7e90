"""End to end: a scheduler loop, diffusers' stock scheduler (provider `diffusers`, the baseline) against fastdiff's
drop-in Fast subclass of it (providers `reference`, `cpu`, `cuda`, `triton`: the `backend` of its one fused step),
with the model replaced by a fixed output tensor so the loop times the scheduler alone.

Two groups of cases, each timing the same loop for the stock and the Fast class:

DDIM / DDPM (`FastDDIMScheduler`, `FastDDPMScheduler`; target ≥ 2x DDIMScheduler on CPU), 50 steps at 4x3x64x64
fp32 (a 64x64 image batch, or a 512x512 latent's size). Their step finds its place from the timestep, so these
cases call `set_timesteps` once, outside the timed loop (as they always have: their timings stay comparable):
- ddim50_default: DDIMScheduler() as configured by default (clip_sample=True, use_clipped_model_output=False: the
  clipped x̂0 with the model's own ε, two fused calls per step in fastdiff), η = 0.
- ddim50_noclip: Stable-Diffusion-style config (scaled_linear, clip_sample=False, steps_offset=1), η = 0.
- ddim50_eta1: default config, η = 1 (noise drawn from a torch.Generator exactly as diffusers does, per step).
- ddpm50: DDPMScheduler() default (fixed_small, clip), 50 respaced steps, generator noise per step.

σ-space and multistep schedulers (`fastdiff.adapters.diffusers_solvers`: stock class -> `FAST_SCHEDULERS[name]`;
target ≥ 3x the stock scheduler on CPU at both shapes), 25 steps (LCM: 4), fp32, at two shapes:
2x4x64x64 (SD-style latents: a 512x512 image, batch 2) and 1x4096x64 (Flux-style packed latents: a 1024x1024 image,
64x64 latent tokens of 2x2x16 channels). Each timed call is one pipeline call's worth of scheduler work, as
StableDiffusionPipeline / FluxPipeline run it: `set_timesteps` *inside* the timed call (once per call, for stock
and Fast alike: it also resets the multistep state, and for the Fast class builds its step table), then per
timestep `scale_model_input` where the scheduler has it (its result is the model's input, here unused) and
`step(model_output, t, latents, generator=..., return_dict=False)`, the generator passed where `step` takes one
(the same seed for every provider, so the Fast class draws the same noise; each fastdiff row records its largest
difference from the stock loop's result, `max_abs_diff_vs_diffusers`). Cases (SD 1.x's scheduler config —
scaled_linear β 0.00085..0.012, steps_offset=1 — unless said otherwise):
- euler25: EulerDiscreteScheduler.
- euler_ancestral25: EulerAncestralDiscreteScheduler (noise every step).
- flow_euler25: FlowMatchEulerDiscreteScheduler with Flux's config (shift 3, dynamic shifting) and FluxPipeline's
  `set_timesteps(sigmas=linspace(1, 1/25, 25), mu=calculate_shift(4096))` at both shapes.
- dpmpp_2m25: DPMSolverMultistepScheduler with its default options (DPM-Solver++ 2M, midpoint, lower_order_final).
- dpmpp_2m_sde25: the same with algorithm_type="sde-dpmsolver++" (noise every step).
- unipc25: UniPCMultistepScheduler default (bh2, order 2, corrector; its step takes no generator).
- lcm4: LCMScheduler default (LCM-LoRA / LCM-distilled SD config), 4 steps, noise on every step but the last.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import fastdiff_bench as fb
from conftest import smoke_mode

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402

from fastdiff.adapters.diffusers import FastDDIMScheduler, FastDDPMScheduler  # noqa: E402
from fastdiff.adapters.diffusers_solvers import FAST_SCHEDULERS  # noqa: E402

PROVIDERS = ("diffusers", "reference", "cpu", "cuda", "triton")

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
@pytest.mark.parametrize("provider", PROVIDERS)
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


# ------------------------------------------------------------------------------ σ-space and multistep schedulers

SOLVER_SHAPES = ((2, 4, 64, 64), (1, 4096, 64))  # SD latents; Flux packed latents (1024x1024 image)
FLUX_SEQ_LEN = 4096  # the packed sequence length calculate_shift sees at 1024x1024
#: SD 1.x's scheduler_config.json (what matters for the solvers); LCMScheduler's defaults are already SD's
SD_BASE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
           "steps_offset": 1}
FLUX_BASE = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
             "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}


def _plain(steps: int) -> dict:
    return {"num_inference_steps": steps}


def _flux(steps: int) -> dict:
    """FluxPipeline's set_timesteps arguments: its σ list and the resolution-dependent shift μ."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = calculate_shift(FLUX_SEQ_LEN, FLUX_BASE["base_image_seq_len"], FLUX_BASE["max_image_seq_len"],
                         FLUX_BASE["base_shift"], FLUX_BASE["max_shift"])
    return {"sigmas": np.linspace(1.0, 1 / steps, steps), "mu": mu}


#: case -> (stock diffusers class name, config, steps, set_timesteps kwargs from steps)
SOLVER_CASES = {
    "euler25": ("EulerDiscreteScheduler", SD_BASE, 25, _plain),
    "euler_ancestral25": ("EulerAncestralDiscreteScheduler", SD_BASE, 25, _plain),
    "flow_euler25": ("FlowMatchEulerDiscreteScheduler", FLUX_BASE, 25, _flux),
    "dpmpp_2m25": ("DPMSolverMultistepScheduler", SD_BASE, 25, _plain),
    "dpmpp_2m_sde25": ("DPMSolverMultistepScheduler", {**SD_BASE, "algorithm_type": "sde-dpmsolver++"}, 25, _plain),
    "unipc25": ("UniPCMultistepScheduler", SD_BASE, 25, _plain),
    "lcm4": ("LCMScheduler", {}, 4, _plain),
}


def pipeline_loop(scheduler, set_kwargs: dict, latents: torch.Tensor, model_output: torch.Tensor, generator,
                  device: str) -> torch.Tensor:
    """One pipeline call's scheduler work with model(x, t) = model_output (a fixed tensor): set_timesteps, then per
    timestep scale_model_input (where the scheduler has it) and step (with the generator where it takes one)."""
    scheduler.set_timesteps(device=device, **set_kwargs)
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    scale = getattr(scheduler, "scale_model_input", None)
    for t in scheduler.timesteps:
        if scale is not None:
            scale(latents, t)  # the model's input; the fixed model ignores it
        latents = scheduler.step(model_output, t, latents, **step_kwargs, return_dict=False)[0]
    return latents


def solver_scheduler(case: str, provider: str):
    """The stock scheduler of `case` (provider `diffusers`) or its Fast subclass with `backend = provider`."""
    name, config, _, _ = SOLVER_CASES[case]
    if provider == "diffusers":
        return getattr(diffusers, name)(**config)
    scheduler = FAST_SCHEDULERS[name](**config)
    scheduler.backend = provider
    return scheduler


@pytest.mark.parametrize("shape", SOLVER_SHAPES, ids=fb.shape_str)
@pytest.mark.parametrize("case", list(SOLVER_CASES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_solver_scheduler_loop(benchmark, request, provider, case, shape):
    """Time one pipeline call's scheduler loop (set_timesteps + 25 steps, LCM 4) of the stock scheduler or its Fast
    subclass, fp32 (the same inputs and generator seed for every provider)."""
    device, _ = fb.runnable_or_skip(request.config, None if provider == "diffusers" else provider)
    _, _, steps, set_kwargs = SOLVER_CASES[case]
    set_kwargs = set_kwargs(steps)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(shape, generator=g).to(device)
    model_output = torch.randn(shape, generator=g).to(device)
    noise_gen = torch.Generator(device=device)

    def loop_of(scheduler):
        def loop():
            noise_gen.manual_seed(1)
            return pipeline_loop(scheduler, set_kwargs, x_T, model_output, noise_gen, device)
        return loop

    run = fb.synced_or_skip(loop_of(solver_scheduler(case, provider)), device, provider)
    if provider != "diffusers":
        out, stock = run(), fb.synced(loop_of(solver_scheduler(case, "diffusers")), device)()
        benchmark.extra_info["max_abs_diff_vs_diffusers"] = float((out - stock).abs().max())
    benchmark.group = f"{case} | {fb.shape_str(shape)} | float32"
    benchmark.extra_info.update(suite="scheduler", provider=provider, case=case, shape=fb.shape_str(shape),
                                dtype="float32", device=device, steps=steps, set_timesteps="inside the timed loop",
                                scheduler=SOLVER_CASES[case][0], threads=torch.get_num_threads())
    if smoke_mode(request.config):
        benchmark(run)
        return
    fb.measure(benchmark, lambda _: run(), None, device="cpu", target_s=2.0, min_rounds=5, max_rounds=60)
