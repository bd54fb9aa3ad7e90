"""End to end: a 50-step DDIM loop (`fastdiff.samplers.sample_ddim`) per provider, with a fixed 1x1 linear map
as the model so the per-step update dominates. Small size on CPU; same size on CUDA.

The `compile` provider is not offered here: the loop dispatches `ops.ddim_step` itself, and torch.compile of
the reference step is measured per step in bench_sampler_step.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fastdiff_bench as fb
from conftest import smoke_mode
from fastdiff.diffusion.schedules import get_named_beta_schedule
from fastdiff.ops import BackendUnavailableError
from fastdiff.samplers import sample_ddim

SHAPE = (2, 4, 64, 64)
TIMESTEPS = list(range(0, fb.NUM_TIMESTEPS, fb.NUM_TIMESTEPS // 50))  # DDIM-50


class LinearModel(torch.nn.Module):
    """ε(x, t) = W x per pixel with a fixed channel-mixing W: [C, C]; costs far less than the step."""

    def __init__(self, channels: int, dtype: torch.dtype, device: str):
        super().__init__()
        w = torch.randn(channels, channels, generator=torch.Generator().manual_seed(0)) / channels ** 0.5
        self.weight = w.to(device=device, dtype=dtype)

    def forward(self, x, t):
        return torch.einsum("oc,nc...->no...", self.weight, x)


@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["eta0", "eta1"])
@pytest.mark.parametrize("provider", ["reference", "cpu", "cuda", "triton"])
def test_ddim50_loop(benchmark, request, provider, eta):
    """Time sample_ddim over 50 steps at 2x4x64x64 fp32 (η = 1 draws in-kernel Philox noise per step)."""
    device, _ = fb.runnable_or_skip(request.config, provider)
    ac = np.cumprod(1.0 - get_named_beta_schedule("linear", fb.NUM_TIMESTEPS))
    model = LinearModel(SHAPE[1], torch.float32, device)
    x_t = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)).to(device)

    def run():
        out = sample_ddim(model, x_t, TIMESTEPS, alphas_cumprod=ac, eta=eta, seed=5 if eta > 0 else None,
                          disable=True, backend=provider)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    try:
        run()
    except (BackendUnavailableError, ModuleNotFoundError, NotImplementedError) as exc:
        pytest.skip(f"{provider}: {type(exc).__name__}: {exc}")
    case = f"ddim50_loop_eta{eta:g}"
    benchmark.group = f"{case} | {fb.shape_str(SHAPE)} | float32"
    benchmark.extra_info.update(suite="loop", provider=provider, case=case, shape=fb.shape_str(SHAPE),
                                dtype="float32", device=device, steps=len(TIMESTEPS))
    if smoke_mode(request.config):
        benchmark(run)
        return
    fb.measure(benchmark, lambda _: run(), None, device="cpu", target_s=2.0, min_rounds=3, max_rounds=30)
