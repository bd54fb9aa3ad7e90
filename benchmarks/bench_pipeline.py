"""End to end: a diffusers `UNet2DModel` DDIM pipeline, stock vs fastdiff's scheduler, patch and graph.

Each call is one `DDIMPipeline(...)(batch_size=N, num_inference_steps=50, eta=0, output_type="pt")`: x_T drawn with
the pipeline's generator, 50 steps of `unet(x, t).sample` + `scheduler.step`, then (x/2 + 0.5).clamp(0, 1).
Providers:
- `diffusers`: the stock pipeline (UNet2DModel + diffusers' DDIMScheduler), the baseline of this suite;
- `auto`: the same pipeline after `pipe.scheduler = FastDDIMScheduler.from_config(pipe.scheduler.config)` and
  `fastdiff.adapters.patch(pipe.unet)` (fused GroupNorm+SiLU / attention kernels, fused step; eager loop);
- `fused+graph`: that patched UNet and FastDDIMScheduler in a `GraphedSampler` (the 50 steps as one CUDA graph),
  with x_T drawn and the output post-processed as the pipeline does (CUDA only).
The scheduler config is DDIMPipeline's default (DDIMScheduler, 1000 linear-β steps, leading spacing) with
clip_sample=False, so all providers compute the same DDIM update (GraphedSampler follows guided-diffusion's
clipped ε, which diffusers' default use_clipped_model_output=None does not); the fused rows record their largest
difference from the stock images (`max_abs_diff_vs_diffusers`).

Models: on CUDA the google/ddpm-cifar10-32 UNet2DModel architecture (35.7M parameters, random weights: no
downloads), fp32, batch 1 / 4 / 16 (the issue's target: fused+graph >= 1.5x stock); on CPU a tiny UNet2DModel
(16x16, 32/64 channels, one attention level), batch 1, so `make bench` exercises the code path in a few seconds.
"""
from __future__ import annotations

import copy

import fastdiff_bench as fb
import pytest
import torch
from conftest import smoke_mode

STEPS = 50
GPU_BATCHES = (1, 4, 16)
#: google/ddpm-cifar10-32's UNet2DModel config (the model DDPMPipeline / DDIMPipeline examples load).
CIFAR32 = {"sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
           "block_out_channels": (128, 256, 256, 256),
           "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
           "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")}
TINY16 = {"sample_size": 16, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
          "block_out_channels": (32, 64), "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
          "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "norm_num_groups": 32}
PROVIDERS = ("diffusers", "auto", "fused+graph")


CPU_BATCHES = (1,)


def _pipeline(config: dict, device: str, provider: str):
    """A DDIMPipeline around a UNet2DModel(**config) with fixed random weights; for fastdiff providers, with
    FastDDIMScheduler.from_config(its config) and the UNet patched."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers: not installed (pip install diffusers)")
    from fastdiff.adapters import patch
    from fastdiff.adapters.diffusers import FastDDIMScheduler

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**config).to(device).eval()
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    if provider != "diffusers":
        pipe.unet = copy.deepcopy(unet)
        if patch(pipe.unet) == 0:
            raise RuntimeError("fastdiff.adapters.patch found nothing to patch in the UNet2DModel")
        pipe.scheduler = FastDDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def _loop(pipe, provider: str, batch: int, device: str):
    """One pipeline call as a no-argument callable returning images [N, 3, H, W] in [0, 1]."""
    from diffusers.utils.torch_utils import randn_tensor

    from fastdiff.samplers import GraphedSampler

    generator = torch.Generator(device=device)
    if provider != "fused+graph":
        def call():
            generator.manual_seed(0)
            with torch.no_grad():
                return pipe(batch_size=batch, generator=generator, num_inference_steps=STEPS, eta=0.0,
                            output_type="pt").images
        return call
    cfg = pipe.unet.config
    shape = (batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    sampler = GraphedSampler(pipe.unet, pipe.scheduler, shape, STEPS, device=device)

    def call():
        generator.manual_seed(0)
        x_t = randn_tensor(shape, generator=generator, device=torch.device(device), dtype=pipe.unet.dtype)
        return (sampler(x_t, clone=False) / 2 + 0.5).clamp(0, 1)

    return call


@pytest.mark.parametrize("batch", GPU_BATCHES, ids=[f"b{b}" for b in GPU_BATCHES])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_unet2d_ddim50_pipeline(benchmark, request, provider, batch):
    """DDIMPipeline, 50 steps, stock vs FastDDIMScheduler + patch (+ GraphedSampler) with the same UNet2DModel."""
    device, _ = fb.runnable_or_skip(request.config, None)
    if device == "cuda":
        case, config = "unet2d_cifar32_ddim50", CIFAR32
    else:
        case, config = "unet2d_tiny16_ddim50", TINY16
        if batch not in CPU_BATCHES:
            pytest.skip(f"the CPU run takes the tiny UNet2DModel at batch {CPU_BATCHES} only")
    if provider == "fused+graph" and device != "cuda":
        pytest.skip("fused+graph: CUDA graphs need a CUDA device (GraphedSampler); not run on CPU")
    loop = _loop(_pipeline(config, device, provider), provider, batch, device)
    run = fb.synced(loop, device)
    out = run()  # warm-up: cuDNN / Triton autotuning, graph capture happened in GraphedSampler
    if provider != "diffusers":
        stock = fb.synced(_loop(_pipeline(config, device, "diffusers"), "diffusers", batch, device), device)()
        benchmark.extra_info["max_abs_diff_vs_diffusers"] = float((out.float() - stock.float()).abs().max())
    shape = f"{case.split('_')[1]}-b{batch}"
    benchmark.group = f"{case} | {shape} | float32"
    benchmark.extra_info.update(suite="pipeline", provider=provider, case=case, shape=shape, dtype="float32",
                                device=device, steps=STEPS, baseline="diffusers")
    if smoke_mode(request.config):
        benchmark(run)
        return
    if device == "cuda":
        fb.measure(benchmark, lambda _: loop(), None, device=device)
    else:
        fb.measure(benchmark, lambda _: loop(), None, device=device, target_s=1.0, min_rounds=3, max_rounds=10)
