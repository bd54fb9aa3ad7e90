"""fastdiff's drop-in diffusers schedulers inside REAL diffusers pipelines give the stock scheduler's images.

For each tiny pipeline (tests/adapters/_tiny_pipelines.py: StableDiffusionPipeline, StableDiffusionXLPipeline,
StableDiffusion3Pipeline, FluxPipeline, DDIMPipeline / DDPMPipeline; fp32, CPU, random weights from a fixed
seed) and each scheduler that fits it, over a representative grid of its options, the pipeline runs twice from
the same seed: once with the stock scheduler `Stock(**options)`, once with
`FAST_SCHEDULERS[Stock.__name__].from_config(stock.config)`. The images (VAE decode included) and, where the
pipeline has a step-end callback, the last step's latents must agree to max|fast − stock| / max|stock| ≤ 1e-4,
and both must be real images (finite, not constant, not saturated).

Option combinations the fast scheduler does not support must raise ValueError / NotImplementedError with a
clear message when it is constructed: they are listed in `UNSUPPORTED`, and for those the test asserts the
error instead of comparing images.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
import diffusers  # noqa: E402

from tests.adapters import _tiny_pipelines as tiny  # noqa: E402

REL = 1e-4


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Tiny models: one thread is faster on the shared 2-core machine."""


def fast_schedulers() -> dict[str, type]:
    """Stock diffusers scheduler class name -> fastdiff drop-in class."""
    from fastdiff.adapters.diffusers import FastDDIMScheduler, FastDDPMScheduler
    from fastdiff.adapters.diffusers_solvers import FAST_SCHEDULERS
    return {"DDIMScheduler": FastDDIMScheduler, "DDPMScheduler": FastDDPMScheduler, **FAST_SCHEDULERS}


@dataclass(frozen=True)
class Case:
    pipeline: str                     # a key of tiny.BUILDERS
    stock: str                        # the diffusers scheduler class name
    options: dict[str, Any] = field(default_factory=dict)  # over tiny.SCHEDULER_BASE[pipeline]
    call: dict[str, Any] = field(default_factory=dict)     # over the builder's call kwargs (eta, steps)
    name: str = ""

    @property
    def id(self) -> str:
        name = f"{self.pipeline}-{self.stock.removesuffix('Scheduler')}"
        return f"{name}-{self.name}" if self.name else name


def C(pipeline, stock, name="", call=None, **options) -> Case:
    return Case(pipeline, stock, options, call or {}, name)


FLOW = dict(use_flow_sigmas=True, prediction_type="flow_prediction")
V_ZSNR = dict(prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True)

CASES: list[Case] = [
    # --- Stable Diffusion (scaled-linear betas, steps_offset 1, ε prediction, CFG 5) ---
    # DDIM as SD ships it: set_alpha_to_one False, steps_offset 1, no clipping, "leading" spacing.
    C("sd", "DDIMScheduler", "eta0", clip_sample=False, set_alpha_to_one=False),
    C("sd", "DDIMScheduler", "eta1", call=dict(eta=1.0), clip_sample=False, set_alpha_to_one=False),
    # "trailing" with 8 | 1000 steps (FastDDIMScheduler documents its deviation when N does not divide T).
    C("sd", "DDIMScheduler", "trailing", call=dict(num_inference_steps=8), clip_sample=False,
      set_alpha_to_one=False, timestep_spacing="trailing"),
    C("sd", "DDPMScheduler", clip_sample=False),
    C("sd", "EulerDiscreteScheduler"),
    C("sd", "EulerDiscreteScheduler", "karras", use_karras_sigmas=True),
    C("sd", "EulerDiscreteScheduler", "trailing", timestep_spacing="trailing"),
    C("sd", "EulerDiscreteScheduler", "exponential", use_exponential_sigmas=True),
    C("sd", "EulerAncestralDiscreteScheduler"),
    C("sd", "EulerAncestralDiscreteScheduler", "leading", timestep_spacing="leading"),
    C("sd", "DPMSolverMultistepScheduler"),  # DPM++ 2M
    C("sd", "DPMSolverMultistepScheduler", "o3", solver_order=3),
    C("sd", "DPMSolverMultistepScheduler", "karras", use_karras_sigmas=True),
    C("sd", "DPMSolverMultistepScheduler", "sde", algorithm_type="sde-dpmsolver++"),
    C("sd", "DPMSolverMultistepScheduler", "sde-karras", algorithm_type="sde-dpmsolver++",
      use_karras_sigmas=True),
    C("sd", "DPMSolverMultistepScheduler", "o3-sigma_min-no_lof", solver_order=3,
      final_sigmas_type="sigma_min", lower_order_final=False),
    # custom timesteps through the pipeline (Align Your Steps' SD 1.5 10-step schedule): `retrieve_timesteps`
    # checks that `set_timesteps` takes `timesteps`
    C("sd", "DPMSolverMultistepScheduler", "ays-timesteps",
      call=dict(num_inference_steps=None, timesteps=[999, 850, 736, 645, 545, 455, 343, 233, 124, 24])),
    C("sd", "UniPCMultistepScheduler"),  # bh2, order 2
    # bh1 with final_sigmas_type "zero" (the default) gives NaN images in stock diffusers 0.42.1 (its last
    # step multiplies B(h) = h = -inf by a zero residual), so bh1 runs with "sigma_min".
    C("sd", "UniPCMultistepScheduler", "bh1-o3-sigma_min", solver_type="bh1", solver_order=3,
      final_sigmas_type="sigma_min"),
    C("sd", "UniPCMultistepScheduler", "bh2-o3", solver_type="bh2", solver_order=3),
    C("sd", "UniPCMultistepScheduler", "karras", use_karras_sigmas=True),
    C("sd", "LCMScheduler", call=dict(num_inference_steps=4)),
    # --- SDXL (text_time UNet, pooled embeddings; ε and v with zero terminal SNR) ---
    C("sdxl", "EulerDiscreteScheduler", "leading", timestep_spacing="leading"),
    C("sdxl", "EulerDiscreteScheduler", "v-zsnr", **V_ZSNR),
    C("sdxl", "EulerDiscreteScheduler", "karras-sigma_min", use_karras_sigmas=True,
      final_sigmas_type="sigma_min"),
    # CosXL / EDM-style: continuous timesteps (the UNet is fed 0.25 log σ)
    C("sdxl", "EulerDiscreteScheduler", "continuous-v", timestep_type="continuous",
      prediction_type="v_prediction", use_karras_sigmas=True),
    C("sdxl", "EulerAncestralDiscreteScheduler", "v-zsnr", **V_ZSNR),
    C("sdxl", "DDIMScheduler", "v-zsnr", call=dict(num_inference_steps=8), clip_sample=False, **V_ZSNR),
    C("sdxl", "DDPMScheduler", "v", clip_sample=False, prediction_type="v_prediction"),
    C("sdxl", "DPMSolverMultistepScheduler", "karras", use_karras_sigmas=True),
    C("sdxl", "DPMSolverMultistepScheduler", "sde-karras", algorithm_type="sde-dpmsolver++",
      use_karras_sigmas=True),
    C("sdxl", "DPMSolverMultistepScheduler", "v-trailing-zero", prediction_type="v_prediction",
      timestep_spacing="trailing", final_sigmas_type="zero"),
    C("sdxl", "UniPCMultistepScheduler", "v", prediction_type="v_prediction"),
    C("sdxl", "LCMScheduler", call=dict(num_inference_steps=4)),
    # --- SD3 (flow matching, shift 3) ---
    C("sd3", "FlowMatchEulerDiscreteScheduler"),
    C("sd3", "FlowMatchEulerDiscreteScheduler", "shift1", shift=1.0),
    C("sd3", "FlowMatchEulerDiscreteScheduler", "karras", use_karras_sigmas=True),
    C("sd3", "FlowMatchEulerDiscreteScheduler", "exponential", use_exponential_sigmas=True),
    C("sd3", "FlowMatchEulerDiscreteScheduler", "beta", use_beta_sigmas=True),
    C("sd3", "FlowMatchEulerDiscreteScheduler", "stochastic", stochastic_sampling=True),
    C("sd3", "DPMSolverMultistepScheduler", "flow", flow_shift=3.0, **FLOW),
    C("sd3", "DPMSolverMultistepScheduler", "flow-o3", flow_shift=3.0, solver_order=3, **FLOW),
    C("sd3", "UniPCMultistepScheduler", "flow", flow_shift=3.0, **FLOW),
    C("sd3", "UniPCMultistepScheduler", "flow-karras", use_karras_sigmas=True, **FLOW),
    # --- Flux (flow matching, dynamic shifting: the pipeline passes `mu` and its own sigmas) ---
    C("flux", "FlowMatchEulerDiscreteScheduler", "dynamic"),
    C("flux", "FlowMatchEulerDiscreteScheduler", "dynamic-linear", time_shift_type="linear"),
    C("flux", "FlowMatchEulerDiscreteScheduler", "karras", use_karras_sigmas=True),
    C("flux", "FlowMatchEulerDiscreteScheduler", "static-shift", use_dynamic_shifting=False),
    # DPMSolver asserts use_dynamic_shifting with time_shift_type "exponential" whenever it is given `mu`.
    C("flux", "DPMSolverMultistepScheduler", "flow-dynamic", use_dynamic_shifting=True, **FLOW),
    C("flux", "UniPCMultistepScheduler", "flow-dynamic", use_dynamic_shifting=True, **FLOW),
    # --- pixel-space DDIMPipeline / DDPMPipeline (linear betas; clipping at ±1, diffusers' default) ---
    C("ddim", "DDIMScheduler", "eta0"),
    C("ddim", "DDIMScheduler", "eta1", call=dict(eta=1.0)),
    C("ddim", "DDIMScheduler", "sd-config-eta1", call=dict(eta=1.0), set_alpha_to_one=False,
      steps_offset=1),
    C("ddpm", "DDPMScheduler"),
    C("ddpm", "DDPMScheduler", "fixed_large", variance_type="fixed_large"),
    # --- options the fast schedulers refuse (see UNSUPPORTED) ---
    C("sd", "DPMSolverMultistepScheduler", "dpmsolver", algorithm_type="dpmsolver",
      final_sigmas_type="sigma_min"),
    C("sd", "DPMSolverMultistepScheduler", "sde-dpmsolver", algorithm_type="sde-dpmsolver",
      final_sigmas_type="sigma_min"),
    C("sd", "DPMSolverMultistepScheduler", "sde-o3", algorithm_type="sde-dpmsolver++", solver_order=3),
    C("sd", "UniPCMultistepScheduler", "predict_eps", predict_x0=False),
    C("sd", "LCMScheduler", "clip", call=dict(num_inference_steps=4), clip_sample=True),
    C("sd", "DDIMScheduler", "thresholding", clip_sample=False, set_alpha_to_one=False,
      thresholding=True),
    C("sd3", "FlowMatchEulerDiscreteScheduler", "invert_sigmas", invert_sigmas=True),
]

# ------------------------------------------------------------------------------------------------------------
# UNSUPPORTED — FOR THE SCHEDULERS' AUTHOR TO MAINTAIN: case id -> regex the error message must match, for the
# option combinations above that the fast scheduler refuses when constructed (ValueError or
# NotImplementedError with a clear message). For these ids the test asserts that
# `Fast.from_config(stock.config)` raises instead of comparing images. Pre-filled from the refusals
# fastdiff/adapters/diffusers_solvers.py's docstring lists (and FastDDIMScheduler's thresholding); each regex
# only asks that the message names the option.
UNSUPPORTED: dict[str, str] = {
    "sd-DPMSolverMultistep-dpmsolver": "algorithm_type",
    "sd-DPMSolverMultistep-sde-dpmsolver": "algorithm_type",
    "sd-DPMSolverMultistep-sde-o3": "solver_order",
    "sd-UniPCMultistep-predict_eps": "predict_x0",
    "sd-LCM-clip": "clip_sample",
    "sd-DDIM-thresholding": "thresholding",
    "sd3-FlowMatchEulerDiscrete-invert_sigmas": "invert_sigmas",
}
# ------------------------------------------------------------------------------------------------------------

_IDS = [c.id for c in CASES]
assert len(set(_IDS)) == len(_IDS), "duplicate case ids"
assert set(UNSUPPORTED) <= set(_IDS), f"UNSUPPORTED names unknown cases: {set(UNSUPPORTED) - set(_IDS)}"


def stock_scheduler(case: Case):
    """`Stock(**options)`: the family's scheduler config (the keys this class takes), then the case's."""
    cls = getattr(diffusers, case.stock)
    accepted = inspect.signature(cls.__init__).parameters
    base = {k: v for k, v in tiny.SCHEDULER_BASE[case.pipeline].items() if k in accepted}
    return cls(**{**base, **case.options})


def run_with(case: Case, scheduler, seed: int = 0):
    pipe, kwargs = tiny.BUILDERS[case.pipeline]()
    pipe.scheduler = scheduler
    images, latents = tiny.run(pipe, {**kwargs, **case.call}, seed)
    assert pipe.scheduler is scheduler  # the pipeline ran with the scheduler it was given
    return images, latents


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / np.abs(b).max())


def assert_real_image(images: np.ndarray) -> None:
    assert np.isfinite(images).all(), "non-finite pixels"
    assert images.std() > 1e-3, f"constant image (std {images.std():.2e})"
    inside = ((images > 0) & (images < 1)).mean()
    assert inside > 0.5, f"only {inside:.0%} of the pixels are inside (0, 1): the image is saturated"


@pytest.mark.parametrize("case", CASES, ids=_IDS)
def test_fast_scheduler_matches_stock_in_pipeline(case: Case):
    stock = stock_scheduler(case)
    fast_cls = fast_schedulers()[case.stock]
    config = dict(stock.config)  # taken before the run: DPMSolver writes `flow_shift` there when given `mu`
    if case.id in UNSUPPORTED:
        with pytest.raises((ValueError, NotImplementedError), match=UNSUPPORTED[case.id]):
            fast_cls.from_config(config)
        return
    fast = fast_cls.from_config(config)
    assert type(fast) is fast_cls

    ref_images, ref_latents = run_with(case, stock)
    images, latents = run_with(case, fast)

    assert_real_image(ref_images)
    assert_real_image(images)
    errs = {"images": rel_err(images, ref_images)}
    if ref_latents is not None:
        assert torch.isfinite(ref_latents).all()
        errs["latents"] = rel_err(latents, ref_latents)
    assert all(e <= REL for e in errs.values()), f"max|fast - stock| / max|stock| = {errs} > {REL}"


# --- the harness itself: deterministic, and sensitive enough for the tolerance to mean something ------------

@pytest.mark.parametrize("pipeline", list(tiny.BUILDERS))
def test_stock_runs_are_reproducible(pipeline):
    """Two stock runs from the same seed (fresh pipeline, fresh scheduler) give the same bits; a different
    seed gives a different image (the generator reaches the initial latents)."""
    case = next(c for c in CASES if c.pipeline == pipeline)
    a, la = run_with(case, stock_scheduler(case), seed=0)
    b, lb = run_with(case, stock_scheduler(case), seed=0)
    c, _ = run_with(case, stock_scheduler(case), seed=1)
    assert_real_image(a)
    np.testing.assert_array_equal(a, b)
    if la is not None:
        torch.testing.assert_close(la, lb, rtol=0, atol=0)
    assert rel_err(c, a) > 100 * REL


@pytest.mark.parametrize("pipeline, stock, change", [
    ("sd", "EulerDiscreteScheduler", dict(beta_end=0.0121)),
    ("sd3", "FlowMatchEulerDiscreteScheduler", dict(shift=3.05)),
    ("flux", "FlowMatchEulerDiscreteScheduler", dict(base_shift=0.505)),
    ("ddim", "DDIMScheduler", dict(beta_end=0.0201)),
])
def test_tolerance_catches_small_scheduler_changes(pipeline, stock, change):
    """A scheduler that differs from the stock one by a ~1% nudge to one config value fails the 1e-4 check:
    the images are sensitive to the schedule (the VAE decode and the [0, 1] clamp do not hide it)."""
    case = C(pipeline, stock)
    ref, ref_lat = run_with(case, stock_scheduler(case))
    nudged = stock_scheduler(C(pipeline, stock, **change))
    out, lat = run_with(case, nudged)
    assert rel_err(out, ref) > 10 * REL
    if ref_lat is not None:
        assert rel_err(lat, ref_lat) > 10 * REL
