"""End to end: a 50-step solver loop — diffusers' own scheduler (provider `diffusers`) against the same sampler as
a table of fastdiff's one fused `sampler_step` (providers `reference`, `cpu`, `cuda`, `triton`: the op's backend),
with the model replaced by a fixed output tensor so the loop times the sampler alone (the target: ≥ 3x the
diffusers loop on CPU).

Cases (diffusers scheduler ↔ fastdiff table builder):
- dpmpp_2m: DPMSolverMultistepScheduler(use_karras_sigmas=True) ↔ tables.dpmpp_2m in VP space.
- unipc: UniPCMultistepScheduler() (bh2, order 2, corrector) ↔ unipc.unipc in VP space.
- euler_a: EulerAncestralDiscreteScheduler() ↔ tables.euler_ancestral in σ-space (noise per step from a
  generator in diffusers, in-kernel Philox in fastdiff).
- flow_euler: FlowMatchEulerDiscreteScheduler(shift=3.0) ↔ tables.euler in flow space.
Shapes: 2x4x64x64 (an SD latent batch) and 1x16x128x128 (a Flux/SD3-size latent), fp32.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import fastdiff_bench as fb
from conftest import smoke_mode

diffusers = pytest.importorskip("diffusers")

from fastdiff.samplers import solvers, tables  # noqa: E402
from fastdiff.samplers.unipc import unipc  # noqa: E402

STEPS = 50
SHAPES = ((2, 4, 64, 64), (1, 16, 128, 128))
CASES = {
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True},
                 lambda s: tables.dpmpp_2m(s, space="vp", prediction="epsilon")),
    "unipc": ("UniPCMultistepScheduler", {}, lambda s: unipc(s, space="vp", prediction="epsilon")),
    "euler_a": ("EulerAncestralDiscreteScheduler", {},
                lambda s: tables.euler_ancestral(s, space="ve", prediction="epsilon")),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0},
                   lambda s: tables.euler(s, space="flow", prediction="flow")),
}


def _diffusers_loop(scheduler, x_T, model_output, generator):
    """The pipeline loop with model(x, t) = model_output (a fixed tensor): scale_model_input where the scheduler
    needs it, then step (with the generator where its step takes one)."""
    kw = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    x = x_T
    for t in scheduler.timesteps:
        if hasattr(scheduler, "scale_model_input"):
            scheduler.scale_model_input(x, t)
        x = scheduler.step(model_output, t, x, **kw).prev_sample
    return x


@pytest.mark.parametrize("shape", SHAPES, ids=fb.shape_str)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("provider", ["diffusers", "reference", "cpu", "cuda", "triton"])
def test_solver_loop(benchmark, request, provider, case, shape):
    """Time a 50-step loop of one sampler (the same inputs for every provider)."""
    device, _ = fb.runnable_or_skip(request.config, None if provider == "diffusers" else provider)
    name, config, build = CASES[case]
    scheduler = getattr(diffusers, name)(**config)
    scheduler.set_timesteps(STEPS, device=device)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(shape, generator=g).to(device)
    model_output = torch.randn(shape, generator=g).to(device)
    if provider == "diffusers":
        noise_gen = torch.Generator(device=device)

        def loop():  # set_timesteps resets the multistep state, as a pipeline call does
            noise_gen.manual_seed(1)
            scheduler.set_timesteps(STEPS, device=device)
            return _diffusers_loop(scheduler, x_T, model_output, noise_gen)
    else:
        sigmas = np.asarray(scheduler.sigmas.double().cpu())
        model = solvers._Plain(lambda x, t: model_output, "epsilon", "ve")

        def loop():  # the table is built per call, as set_timesteps is
            return solvers.run_table(model, x_T, build(sigmas), disable=True, seed=1, backend=provider)

    run = fb.synced_or_skip(loop, device, provider)
    benchmark.group = f"solver {case} | {fb.shape_str(shape)} | float32"
    benchmark.extra_info.update(suite="solver", provider=provider, case=case, shape=fb.shape_str(shape),
                                dtype="float32", device=device, steps=STEPS, threads=torch.get_num_threads())
    if smoke_mode(request.config):
        benchmark(run)
        return
    fb.measure(benchmark, lambda _: run(), None, device="cpu", target_s=2.0, min_rounds=5, max_rounds=60)
