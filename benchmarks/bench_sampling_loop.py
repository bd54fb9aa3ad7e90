"""End to end: 50-step DDIM loops per provider.

`test_ddim50_loop`: `fastdiff.samplers.sample_ddim` with a fixed 1x1 linear map as the model so the per-step update
dominates (same size on CPU and CUDA); providers: each fused backend, `reference`, `fused+graph`
(`GraphedSampler`, CUDA only) and `diffusers` (diffusers' DDIMScheduler loop with the same model). `compile` is not
offered here: the loop dispatches `ops.ddim_step` itself; torch.compile of the reference step is measured per step
in bench_sampler_step.py.

`test_adm64_cfg_ddim50` (CUDA only, `make gpu-check`): the ImageNet-64 ADM (bench_unet's adm64_imagenet with a
1001st, null class) sampled with DDIM-50, η = 0, classifier-free guidance s = 4 (one forward on the doubled batch),
batch 1 / 4 / 16, bf16 autocast over fp32 weights. Providers: `reference` (every fastdiff op on its plain-PyTorch
backend, eager loop), `compile` (torch.compile(mode="max-autotune", dynamic=False) of that reference model, eager
loop), `auto` (fused kernels, eager loop), `fused+graph` (fused kernels, whole loop as one CUDA graph:
GraphedSampler), `diffusers` (diffusers' DDIMScheduler.step loop around the fused model). Every row records the
first (warm-up) call's seconds as `warmup_s`: for `compile` that is the max-autotune compile.

Time budget (all of `make gpu-check` in ~10 minutes): max-autotune benchmarks Triton GEMM/conv templates
for every distinct conv/matmul shape of the ADM (dozens at 64², 32², 16², 8²), minutes per batch size on 16 CPU
cores, and each batch size is a separate compile. So `compile` runs at batch 16 only (the GPU-bound case, where
autotuned kernels matter most) unless --bench-full (all of ADM_BATCHES); FASTDIFF_BENCH_COMPILE_MODE overrides the
mode (e.g. "max-autotune-no-cudagraphs"; the default keeps inductor's CUDA graphs, the issue's baseline).
`fused+graph` rows also record the GPU idle time of one replay as a fraction of its wall time
(`gpu_idle_frac`, `fastdiff_bench.gpu_idle`; target <= 5%).
"""
from __future__ import annotations

import os
import time

import fastdiff_bench as fb
import numpy as np
import pytest
import torch
from conftest import smoke_mode

from fastdiff import ops
from fastdiff.schedules import get_named_beta_schedule
from fastdiff.samplers import GraphedSampler, sample_ddim

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
@pytest.mark.parametrize("provider", ["reference", "cpu", "cuda", "triton", "fused+graph", "diffusers"])
def test_ddim50_loop(benchmark, request, provider, eta):
    """Time sample_ddim over 50 steps at 2x4x64x64 fp32 (η = 1 draws in-kernel Philox noise per step)."""
    device, _ = fb.runnable_or_skip(request.config, None if provider in PEERS else provider)
    ac = np.cumprod(1.0 - get_named_beta_schedule("linear", fb.NUM_TIMESTEPS))
    model = LinearModel(SHAPE[1], torch.float32, device)
    x_t = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)).to(device)
    if provider == "fused+graph":
        graph_or_skip(device)
        sampler = GraphedSampler(model, ac, SHAPE, len(TIMESTEPS), eta=eta, device=device)
        loop = lambda: sampler(x_t, seed=5)
    elif provider == "diffusers":
        loop = diffusers_loop(model, x_t, eta, {})
    else:
        loop = lambda: sample_ddim(model, x_t, TIMESTEPS, alphas_cumprod=ac, eta=eta,
                                   seed=5 if eta > 0 else None, disable=True, backend=provider)

    run = fb.synced_or_skip(loop, device, provider)
    case = f"ddim50_loop_eta{eta:g}"
    benchmark.group = f"{case} | {fb.shape_str(SHAPE)} | float32"
    benchmark.extra_info.update(suite="loop", provider=provider, case=case, shape=fb.shape_str(SHAPE),
                                dtype="float32", device=device, steps=len(TIMESTEPS))
    if smoke_mode(request.config):
        benchmark(run)
        return
    fb.measure(benchmark, lambda _: run(), None, device="cpu", target_s=2.0, min_rounds=3, max_rounds=30)


# ----------------------------------------------------------------------------------------------- peers and ADM

PEERS = ("fused+graph", "diffusers")
ADM64 = {"image_size": 64, "in_channels": 3, "model_channels": 192, "out_channels": 6, "num_res_blocks": 3,
         "attention_resolutions": (2, 4, 8), "channel_mult": (1, 2, 3, 4), "num_head_channels": 64,
         "use_scale_shift_norm": True, "resblock_updown": True, "num_classes": 1001}  # class 1000: the null label
ADM_PROVIDERS = ("reference", "compile", "auto", "fused+graph", "diffusers")
ADM_BATCHES = (1, 4, 16)
ADM_COMPILE_BATCHES = (16,)  # max-autotune compiles per batch size take minutes: see the module docstring
COMPILE_MODE = os.environ.get("FASTDIFF_BENCH_COMPILE_MODE", "max-autotune")
CFG_SCALE = 4.0


def graph_or_skip(device: str) -> None:
    """Skip fused+graph where there is no CUDA device (CUDA graphs)."""
    if device != "cuda":
        pytest.skip("fused+graph: CUDA graphs need a CUDA device (GraphedSampler); not run on CPU")


def diffusers_loop(model, x_t, eta: float, kwargs: dict, guidance_scale: float | None = None, uncond=None):
    """diffusers' own DDIMScheduler (DDIM-50 over the same linear schedule, set_alpha_to_one, no clipping) stepping
    `model`'s ε; with guidance_scale: ε = ε_u + s(ε_c − ε_u) from one forward on the doubled batch."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers: not installed (pip install diffusers)")
    sched = diffusers.DDIMScheduler(num_train_timesteps=fb.NUM_TIMESTEPS, beta_schedule="linear", clip_sample=False,
                                    set_alpha_to_one=True)
    sched.set_timesteps(len(TIMESTEPS))
    n = x_t.shape[0]
    times = [t.to(x_t.device).expand(n) for t in sched.timesteps]
    generator = torch.Generator(device=x_t.device)

    def loop():
        x = x_t
        generator.manual_seed(5)
        for step_t, t in zip(sched.timesteps, times):
            if guidance_scale is None:
                eps = model(x, t, **kwargs)
            else:
                both = model(torch.cat([x, x]), torch.cat([t, t]),
                             **{k: torch.cat([v, uncond[k]]) for k, v in kwargs.items()})
                cond, unc = both[:n], both[n:]
                eps = unc + guidance_scale * (cond - unc)
            x = sched.step(eps[:, :x.shape[1]], step_t, x, eta=eta, generator=generator).prev_sample
        return x

    return loop


def _adm_model(provider: str):
    """(callable model(x, t, y) -> ε [N, 3, 64, 64] in fp32 under bf16 autocast, backend of the sampler steps)."""
    from fastdiff.models import UNetModel

    torch.manual_seed(0)
    net = UNetModel(**ADM64).cuda().eval()
    with torch.no_grad():  # ADM zero-initialises its output convs: real (random) weights everywhere
        for p in net.parameters():
            p.normal_(0.0, 0.02)

    def forward(x, t, y):
        # cache_enabled=False: autocast's weight-cast cache must not outlive a CUDA graph capture
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            out = net(x, t, y)
        return out[:, :3].float()

    if provider == "compile":
        forward = torch.compile(forward, mode=COMPILE_MODE, dynamic=False)  # one static compile per batch size
    if provider not in ("reference", "compile"):
        return forward, None
    inner = forward

    def reference_forward(x, t, y):  # every fastdiff op of the model on its plain-PyTorch backend
        with ops.use_backend("reference"):
            return inner(x, t, y)

    return reference_forward, "reference"


@pytest.mark.parametrize("batch", ADM_BATCHES, ids=[f"b{b}" for b in ADM_BATCHES])
@pytest.mark.parametrize("provider", ADM_PROVIDERS)
def test_adm64_cfg_ddim50(benchmark, request, provider, batch):
    """ImageNet-64 ADM, DDIM-50, CFG s = 4, bf16 autocast: the issue's end-to-end GPU figure per provider."""
    device, _ = fb.runnable_or_skip(request.config, None)
    if device != "cuda":
        pytest.skip("adm64_cfg_ddim50: the ImageNet-64 ADM end to end is GPU-only (minutes per call on 2 CPU cores)")
    if provider == "compile" and batch not in ADM_COMPILE_BATCHES and not request.config.getoption("--bench-full"):
        pytest.skip(f"compile: {COMPILE_MODE} compiles take minutes per batch size; batch {batch} runs with "
                    f"--bench-full (default: batches {ADM_COMPILE_BATCHES})")
    ac = np.cumprod(1.0 - get_named_beta_schedule("linear", fb.NUM_TIMESTEPS))
    shape = (batch, 3, 64, 64)
    x_t = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    y = torch.arange(batch, device=device) % 1000
    null = torch.full_like(y, 1000)
    model, backend = _adm_model(provider)
    if provider == "fused+graph":
        sampler = GraphedSampler(model, ac, shape, len(TIMESTEPS), eta=0.0, guidance_scale=CFG_SCALE,
                                 model_kwargs={"y": y}, uncond_kwargs={"y": null})
        loop = lambda: sampler(x_t, seed=5)
    elif provider == "diffusers":
        loop = diffusers_loop(model, x_t, 0.0, {"y": y}, guidance_scale=CFG_SCALE, uncond={"y": null})
    else:
        loop = lambda: sample_ddim(model, x_t, TIMESTEPS, {"y": y}, alphas_cumprod=ac, eta=0.0,
                                   guidance_scale=CFG_SCALE, uncond_args={"y": null}, disable=True, backend=backend)

    def run(_=None):
        with torch.no_grad():
            return loop()

    start = time.perf_counter()
    run()  # warm-up: Triton / inductor (max-autotune) compiles, cuDNN autotuning
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - start
    case = "adm64_cfg_ddim50"
    benchmark.group = f"{case} | b{batch} | bfloat16"
    benchmark.extra_info.update(suite="loop", provider=provider, case=case, shape=f"adm64-b{batch}",
                                dtype="bfloat16", device=device, steps=len(TIMESTEPS), cfg_scale=CFG_SCALE,
                                warmup_s=warmup_s)
    if provider == "compile":
        benchmark.extra_info["compile_mode"] = COMPILE_MODE
    if provider == "fused+graph":
        record_gpu_idle(benchmark, lambda: sampler(x_t, seed=5, clone=False))
    if smoke_mode(request.config):
        benchmark(run)
        return
    fb.measure(benchmark, run, None, device=device)


def record_gpu_idle(benchmark, replay) -> None:
    """GPU idle time of `replay` (a GraphedSampler call) into extra_info (fastdiff_bench.gpu_idle), or why not."""
    try:
        benchmark.extra_info.update(fb.gpu_idle(replay), gpu_idle_target=0.05)
    except RuntimeError as exc:  # no CUPTI: the timing still counts, the idle figure is owed
        benchmark.extra_info["gpu_idle_error"] = str(exc)
