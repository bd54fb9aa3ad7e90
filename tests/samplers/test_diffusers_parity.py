"""Whole-loop parity of every table builder with diffusers' stock scheduler loop (docs/architecture.md, "Adding a sampler"), fp32.

Each case runs the peer's loop as a pipeline does it (`set_timesteps`; per timestep the model on
`scale_model_input(x, t)`, then `step(..., generator=g)`; Heun's step takes no generator) with a fixed toy
model, and the same loop through the table builder + `run_table` from the same initial noise, with the peer's
model timesteps. Stochastic samplers get the peer's noise from a `noise_sampler` drawing
`torch.randn(x.shape, generator=g')` from an identically seeded generator, which is what `randn_tensor` does
for a CPU generator. The peer draws one noise tensor per step after its model call (Euler-a, DPM-Solver++ SDE
and DDIM η > 0 on every step, LCM on all but the last, DDPM at t > 0); `run_table` calls its noise_sampler
once per row with c_z ≠ 0, in order; the only peer draws without a matching row are on the last step, where
they multiply 0 (σ_up = 0, σ_next = 0, ᾱ_prev = 1), so the two streams line up.

The error is max|ours − peer| / max|peer| over the final sample (printed; run with -s to see it). The builders'
peer-matching options are passed where diffusers differs from the papers' formulation: lower_order_final
(DPM-Solver++ at < 15 steps), prev_timesteps (DDIM steps to t − T//n), clipped_eps=False (DDIM's raw ε̂
beside a clipped x̂0: the op's C_O column) and final_noise (DDPM noise at a last t > 0).
"""
from __future__ import annotations

import dataclasses
import inspect
import math

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from fastdiff.samplers import tables  # noqa: E402
from fastdiff.samplers.solvers import DiscreteVPDenoiser, _Plain, run_table  # noqa: E402

SHAPE = (2, 4, 8, 8)
RTOL = 1e-5
BACKENDS = ["reference"] + (["cpu"] if hasattr(torch.ops.fastdiff, "sampler_step") else [])


class ToyModel:
    """A fixed random 1x1 conv of x plus a per-channel function of t, through tanh:
    out = tanh(W·x + b + u·cos(t/300) + v·sin(t/170)). Deterministic (its own generator), fp32; `out_channels`
    = 2C gives a learned-variance model whose second half (in [-1, 1]) is read as the interpolation v."""

    def __init__(self, channels: int = SHAPE[1], out_channels: int | None = None, seed: int = 1234):
        g = torch.Generator().manual_seed(seed)
        out_channels = out_channels or channels
        self.w = torch.randn(out_channels, channels, generator=g) / math.sqrt(channels)
        self.b = 0.1 * torch.randn(out_channels, generator=g)
        self.u = 0.5 * torch.randn(out_channels, generator=g)
        self.v = 0.5 * torch.randn(out_channels, generator=g)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t).to(torch.float32).reshape(-1).expand(x.shape[0])
        shape = (x.shape[0], -1) + (1,) * (x.dim() - 2)
        h = torch.einsum("oc,nc...->no...", self.w, x.float()) + self.b.reshape(1, -1, *(1,) * (x.dim() - 2))
        h = h + (torch.cos(t / 300)[:, None] * self.u + torch.sin(t / 170)[:, None] * self.v).reshape(shape)
        return torch.tanh(h)


# ------------------------------------------------------------------------------------------- the two loops


def peer_loop(sched, model, x, seed: int, **step_kwargs) -> torch.Tensor:
    """diffusers' pipeline loop: model on the scaled input at each of scheduler.timesteps, then step."""
    g = torch.Generator().manual_seed(seed)
    if "generator" in inspect.signature(sched.step).parameters:
        step_kwargs["generator"] = g
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        x = sched.step(model(x_in, t), t, x, **step_kwargs).prev_sample
    return x


def our_loop(wrapper, x, table: tables.StepTable, seed: int, backend: str) -> torch.Tensor:
    """The same loop on the fused step: one `sampler_step` per table row, the peer's noise stream."""
    g = torch.Generator().manual_seed(seed)

    def noise_sampler(sigma, sigma_next):  # randn_tensor(x.shape, generator=g) on CPU, float32
        return torch.randn(x.shape, generator=g)

    return run_table(wrapper, x, table, noise_sampler=noise_sampler if table.stochastic else None,
                     backend=backend, disable=True)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _with_timesteps(table: tables.StepTable, timesteps) -> tables.StepTable:
    """The table with the peer's model timesteps (one per row)."""
    ts = _np(torch.as_tensor(timesteps))
    assert len(ts) == len(table), (len(ts), len(table))
    return dataclasses.replace(table, timesteps=ts)


# ------------------------------------------------------------------------------------------------ families
# Each returns (peer scheduler, step kwargs, fastdiff model wrapper, StepTable) for a case's options.


def _euler_like(cls, builder, opts, model):
    sched = cls(prediction_type=opts.get("prediction", "epsilon"),
                **({"use_karras_sigmas": True} if opts.get("karras") else {}))
    sched.set_timesteps(opts["steps"])
    wrapper = DiscreteVPDenoiser(model, sched.alphas_cumprod, prediction=opts.get("prediction", "epsilon"))
    sigmas = _np(sched.sigmas)
    if builder is tables.heun:  # the peer repeats each interior σ for its corrector: [σ0, σ1, σ1, …, 0]
        sigmas = np.append(sigmas[:1], sigmas[1::2])
    table = builder(sigmas, space="ve", prediction=wrapper.prediction)
    return sched, {}, wrapper, _with_timesteps(table, sched.timesteps)


def euler(opts, model):
    return _euler_like(diffusers.EulerDiscreteScheduler, tables.euler, opts, model)


def euler_ancestral(opts, model):
    return _euler_like(diffusers.EulerAncestralDiscreteScheduler, tables.euler_ancestral, opts, model)


def heun(opts, model):
    return _euler_like(diffusers.HeunDiscreteScheduler, tables.heun, opts, model)


def dpmpp(opts, model):
    sde = opts["algorithm"] == "sde-dpmsolver++"
    sched = diffusers.DPMSolverMultistepScheduler(
        algorithm_type=opts["algorithm"], solver_order=2, solver_type="midpoint", lower_order_final=True,
        use_karras_sigmas=opts.get("karras", False), final_sigmas_type=opts.get("final", "zero"))
    sched.set_timesteps(opts["steps"])
    sigmas = _np(sched.sigmas)  # σ̃ = √((1 − ᾱ)/ᾱ) of the VP sample, then the final σ
    builder = tables.dpmpp_2m_sde if sde else tables.dpmpp_2m
    options = {"lower_order_final": True}
    if sde:
        table = builder(sigmas, eta=1.0, solver_type="midpoint", space="vp", prediction="epsilon", **options)
    else:
        table = builder(sigmas, space="vp", prediction="epsilon", **options)
    return sched, {}, _Plain(model, "epsilon", "vp"), _with_timesteps(table, sched.timesteps)


def flow_euler(opts, model):
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=opts["shift"])
    sched.set_timesteps(opts["steps"])
    table = tables.euler(_np(sched.sigmas), space="flow", prediction="flow")
    return sched, {}, _Plain(model, "flow", "flow"), _with_timesteps(table, sched.timesteps)


def lcm(opts, model):
    sched = diffusers.LCMScheduler(prediction_type="epsilon")
    sched.set_timesteps(opts["steps"])
    table = tables.lcm(_np(sched.alphas_cumprod), sched.timesteps.tolist(), prediction="epsilon",
                       timestep_scaling=sched.config.timestep_scaling)
    return sched, {}, _Plain(model, "epsilon", "vp"), table


def ddim(opts, model):
    sched = diffusers.DDIMScheduler(clip_sample=opts["clip"], set_alpha_to_one=opts.get("alpha_to_one", True),
                                    timestep_spacing=opts["spacing"], steps_offset=opts.get("offset", 0))
    sched.set_timesteps(opts["steps"])
    ts = sched.timesteps.tolist()
    step = sched.config.num_train_timesteps // opts["steps"]  # the peer steps from t to t − T//n
    options = {"prev_timesteps": [t - step for t in ts], "clipped_eps": opts.get("clipped_eps", False)}
    table = tables.ddim(_np(sched.alphas_cumprod), ts, eta=opts["eta"], prediction="epsilon",
                        clip=1.0 if opts["clip"] else 0.0,
                        final_alpha_cumprod=float(sched.final_alpha_cumprod), **options)
    step_kwargs = {"eta": opts["eta"], "use_clipped_model_output": opts.get("clipped_eps", False)}
    return sched, step_kwargs, _Plain(model, "epsilon", "vp"), table


def ddpm(opts, model):
    sched = diffusers.DDPMScheduler(variance_type=opts["var"], clip_sample=True,
                                    timestep_spacing=opts.get("spacing", "leading"))
    sched.set_timesteps(opts["steps"])
    table = tables.ddpm(_np(sched.alphas_cumprod), sched.timesteps.tolist(), var_type=opts["var"],
                        prediction="epsilon", clip=1.0, final_noise=True)
    return sched, {}, _Plain(model, "epsilon", "vp"), table


# --------------------------------------------------------------------------------------------------- cases


def _case(case_id: str, family, marks=(), **opts):
    return pytest.param(family, opts, id=case_id, marks=marks)


_DPM, _SDE = "dpmsolver++", "sde-dpmsolver++"
CASES = [
    _case("euler-eps", euler, steps=10),
    _case("euler-eps-karras", euler, steps=10, karras=True),
    _case("euler-v", euler, steps=10, prediction="v_prediction"),
    _case("euler-v-karras", euler, steps=10, prediction="v_prediction", karras=True),
    _case("euler_a-eps", euler_ancestral, steps=10),
    _case("euler_a-v", euler_ancestral, steps=10, prediction="v_prediction"),
    _case("heun-eps", heun, steps=8),
    _case("heun-eps-karras", heun, steps=8, karras=True),
    _case("heun-v", heun, steps=8, prediction="v_prediction"),
    _case("dpmpp_2m-10", dpmpp, algorithm=_DPM, steps=10),
    _case("dpmpp_2m-20", dpmpp, algorithm=_DPM, steps=20),
    _case("dpmpp_2m-10-karras", dpmpp, algorithm=_DPM, steps=10, karras=True),
    _case("dpmpp_2m-20-sigma_min", dpmpp, algorithm=_DPM, steps=20, final="sigma_min"),
    _case("dpmpp_2m-10-sigma_min", dpmpp, algorithm=_DPM, steps=10,
          final="sigma_min"),
    _case("dpmpp_2m_sde-10", dpmpp, algorithm=_SDE, steps=10),
    _case("dpmpp_2m_sde-20", dpmpp, algorithm=_SDE, steps=20),
    _case("dpmpp_2m_sde-10-karras", dpmpp, algorithm=_SDE, steps=10, karras=True),
    _case("dpmpp_2m_sde-10-sigma_min", dpmpp, algorithm=_SDE, steps=10,
          final="sigma_min"),
    _case("flow_euler-shift1", flow_euler, steps=10, shift=1.0),
    _case("flow_euler-shift3", flow_euler, steps=10, shift=3.0),
    _case("lcm-4", lcm, steps=4),
    _case("lcm-8", lcm, steps=8),
    _case("ddim-eta0-leading", ddim, steps=10, eta=0.0, spacing="leading", clip=False),
    _case("ddim-eta0-trailing", ddim, steps=10, eta=0.0, spacing="trailing", clip=False),
    _case("ddim-eta1-leading", ddim, steps=10, eta=1.0, spacing="leading", clip=False),
    _case("ddim-eta1-trailing", ddim, steps=10, eta=1.0, spacing="trailing", clip=False),
    _case("ddim-eta0-leading-offset1", ddim, steps=10, eta=0.0, spacing="leading", offset=1, clip=False),
    _case("ddim-eta1-clip-clipped_eps", ddim, steps=10, eta=1.0, spacing="leading", clip=True,
          clipped_eps=True),
    _case("ddim-eta0-clip-clipped_eps", ddim, steps=10, eta=0.0, spacing="trailing", clip=True,
          clipped_eps=True),
    _case("ddim-eta0-clip-raw_eps", ddim, steps=10, eta=0.0, spacing="leading",
          clip=True),
    _case("ddim-eta0-alpha_to_one_false", ddim, steps=10, eta=0.0, spacing="leading", clip=False,
          alpha_to_one=False),
    # Stable Diffusion's DDIM config: steps_offset 1, set_alpha_to_one False, so the last step (t = 1) goes
    # to ᾱ_0 and adds noise for η > 0
    _case("ddim-eta1-alpha_to_one_false-offset1", ddim, steps=10, eta=1.0, spacing="leading", offset=1,
          clip=False, alpha_to_one=False),
    _case("ddim-eta0-trailing-7", ddim, steps=7, eta=0.0, spacing="trailing",
          clip=False),
    _case("ddpm-fixed_small", ddpm, steps=10, var="fixed_small"),
    _case("ddpm-fixed_large", ddpm, steps=10, var="fixed_large"),
    _case("ddpm-learned_range", ddpm, steps=10, var="learned_range"),
    _case("ddpm-fixed_large-trailing", ddpm, steps=10, var="fixed_large",
          spacing="trailing"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family, opts", CASES)
def test_builder_matches_diffusers_loop(family, opts, backend, one_thread, request):
    model = ToyModel(out_channels=2 * SHAPE[1] if opts.get("var") == "learned_range" else None)
    sched, step_kwargs, wrapper, table = family(opts, model)
    x_init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    x_init = x_init * float(getattr(sched, "init_noise_sigma", 1.0))  # flow matching has none: 1
    seed = 99
    with torch.no_grad():
        expected = peer_loop(sched, model, x_init.clone(), seed, **step_kwargs)
        got = our_loop(wrapper, x_init.clone(), table, seed, backend)
    assert got.dtype == expected.dtype == torch.float32 and got.shape == expected.shape
    scale = expected.abs().max().item()
    assert math.isfinite(scale) and scale > 0.1, scale  # a real sample, not a collapsed one
    err = (got - expected).abs().max().item() / scale
    print(f"\n[diffusers parity] {request.node.callspec.id}: max rel err {err:.3e}")
    assert err <= RTOL, f"max |ours − diffusers| / max |diffusers| = {err:.3e} > {RTOL}"
