"""End to end: a tiny Stable Diffusion pipeline, stock vs the same pipeline after `fastdiff.accelerate(pipe)`.

The pipeline is `tests/adapters/_tiny_pipelines.tiny_sd()`: a real diffusers `StableDiffusionPipeline` with a tiny
UNet2DConditionModel (block channels 4/8, one cross-attention level) and AutoencoderKL (vae_scale_factor 2), random
weights from a fixed seed (no downloads), text embeddings passed directly (`prompt_embeds` /
`negative_prompt_embeds`, guidance 5: the UNet runs on the CFG batch of 2), output_type="np" (VAE decode and
post-processing included). Its scheduler is replaced by `DPMSolverMultistepScheduler` with SD 1.x's config
(DPM-Solver++ 2M), so `accelerate` has a fused scheduler to swap in. 25 steps; images of 16x16 (8x8 latents) and
64x64 (32x32 latents); batch 1.

Each timed call is one `pipe(**kwargs, generator=g)` with the generator reseeded (the same x_T and images for every
provider). Providers:
- `diffusers`: the stock pipeline (the baseline of the `pipeline` suite);
- `auto`: the same pipeline object after `fastdiff.accelerate(pipe)` (FastDPMSolverMultistepScheduler; fused ops
  patched into the UNet and VAE, which on the CPU take only tensors of at least CPU_FUSED_MIN_NUMEL elements);
  `fastdiff.deaccelerate(pipe)` after the test;
- `fused+graph`: `fastdiff.accelerate(pipe, cuda_graph=True)` (the denoising loop replayed as one CUDA graph after a
  warm-up and a capture call; CUDA only).
fastdiff rows record their largest difference from the stock images (`max_abs_diff_vs_diffusers`) and the
accelerate report (`acceleration`).

The UNet is tiny, but its Python / module overhead alone is several ms per call on CPU, so even at 16x16 the
scheduler is a few % of a pipeline call: this suite shows what accelerate does to a whole (small) pipeline, while
bench_schedulers.py times the schedulers alone.
"""
from __future__ import annotations

import sys
from pathlib import Path

import fastdiff_bench as fb
import pytest
import torch
from conftest import smoke_mode

STEPS = 25
RESOLUTIONS = (16, 64)
PROVIDERS = ("diffusers", "auto", "fused+graph")
TINY_PIPELINES = Path(__file__).resolve().parent.parent / "tests" / "adapters"


def _tiny_sd(resolution: int, device: str):
    """(StableDiffusionPipeline with DPMSolverMultistepScheduler, call kwargs without the generator)."""
    pytest.importorskip("diffusers", reason="diffusers: not installed (pip install diffusers)")
    from diffusers import DPMSolverMultistepScheduler

    sys.path.insert(0, str(TINY_PIPELINES))
    try:
        import _tiny_pipelines as tiny
    except ImportError as exc:
        pytest.skip(f"tests/adapters/_tiny_pipelines.py cannot be imported: {exc}")
    finally:
        sys.path.remove(str(TINY_PIPELINES))
    pipe, kwargs = tiny.tiny_sd(steps=STEPS)
    pipe.scheduler = DPMSolverMultistepScheduler(**tiny.SCHEDULER_BASE["sd"])
    pipe = pipe.to(device)
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    kwargs.update(height=resolution, width=resolution, num_inference_steps=STEPS)
    return pipe, kwargs


def _call(pipe, kwargs: dict, device: str):
    """One pipeline call as a no-argument callable returning the images (float32 numpy [N, H, W, 3])."""
    generator = torch.Generator(device=device)

    def call():
        generator.manual_seed(0)
        with torch.no_grad():
            return pipe(**kwargs, generator=generator).images
    return call


@pytest.mark.parametrize("resolution", RESOLUTIONS, ids=[f"{r}px" for r in RESOLUTIONS])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_sd_pipeline(benchmark, request, provider, resolution):
    """StableDiffusionPipeline (tiny UNet, DPM-Solver++ 2M, 25 steps, CFG): stock vs fastdiff.accelerate(pipe)."""
    device, _ = fb.runnable_or_skip(request.config, None)
    if provider == "fused+graph" and device != "cuda":
        pytest.skip("fused+graph: CUDA graphs need a CUDA device (accelerate(cuda_graph=True)); not run on CPU")
    import fastdiff
    if not hasattr(fastdiff, "accelerate"):
        pytest.skip("fastdiff.accelerate is not in this checkout")
    pipe, kwargs = _tiny_sd(resolution, device)
    call = _call(pipe, kwargs, device)
    stock = call() if provider != "diffusers" else None
    if provider != "diffusers":
        report = fastdiff.accelerate(pipe, cuda_graph=provider == "fused+graph")
        request.addfinalizer(lambda: fastdiff.deaccelerate(pipe))
    run = fb.synced(call, device)
    out = run()  # warm-up (fused+graph: the eager call; the next one captures the loop)
    if provider == "fused+graph":
        out = run()
    if provider != "diffusers":
        benchmark.extra_info["max_abs_diff_vs_diffusers"] = float(abs(out - stock).max())
        benchmark.extra_info["acceleration"] = str(report)
    case, shape = "sd_tiny_dpmpp2m25", f"{resolution}px-b1"
    benchmark.group = f"{case} | {shape} | float32"
    benchmark.extra_info.update(suite="pipeline", provider=provider, case=case, shape=shape, dtype="float32",
                                device=device, steps=STEPS, baseline="diffusers", threads=torch.get_num_threads())
    if smoke_mode(request.config):
        benchmark(run)
        return
    fb.measure(benchmark, lambda _: run(), None, device=device, target_s=3.0, min_rounds=5, max_rounds=20)
