"""The ADM UNet (`fastdiff.models.UNetModel`), forward and forward + backward, per provider:
`reference` runs every fastdiff op on its plain-PyTorch backend (guided-diffusion's eager sequence: GroupNorm32,
·(1 + scale) + shift, SiLU, einsum attention), `compile` is torch.compile of that model, and `auto` the fused
backends fastdiff picks on the device (CPU: the C++ adagn and SDPA attention; CUDA: the CUDA/Triton kernels).
Outputs of the providers agree (tests/models); this file only times them.

Configurations: on CPU a CIFAR-sized ADM (32², 128 channels, attention at 16/8, batch 4, fp32); on CUDA the
ImageNet-64 ADM (192 channels, 3 res blocks, attention at 32/16/8 with 64-channel heads, scale-shift norm,
BigGAN up/down, learned sigma, 1000 classes) at batch 32 (and 1) in bf16 (torch.autocast over the fp32 model)
and fp16 (guided-diffusion's `convert_to_fp16`: torso convolutions in fp16, norms and embeddings in fp32).

Run through `benchmarks/run.py`, or as a quick check:
`python -m pytest benchmarks/bench_unet.py --benchmark-disable -q` (each benchmark once).
"""
from __future__ import annotations

import contextlib
import itertools

import torch

import fastdiff_bench as fb
from conftest import compile_backend, smoke_mode
from fastdiff import ops
from fastdiff.models import UNetModel

PROVIDERS = ("reference", "compile", "auto")
DIRECTIONS = ("fwd", "fwdbwd")
ADM = {"in_channels": 3, "out_channels": 6, "use_scale_shift_norm": True, "resblock_updown": True,
       "num_head_channels": 64}
CONFIGS = {
    "adm32": {**ADM, "image_size": 32, "model_channels": 128, "num_res_blocks": 2, "attention_resolutions": (2, 4),
              "channel_mult": (1, 2, 2, 2)},
    "adm64_imagenet": {**ADM, "image_size": 64, "model_channels": 192, "num_res_blocks": 3,
                       "attention_resolutions": (2, 4, 8), "channel_mult": (1, 2, 3, 4), "num_classes": 1000},
}
CPU_POINTS = (("adm32", 4, "float32"),)
GPU_POINTS = (("adm64_imagenet", 32, "bfloat16"), ("adm64_imagenet", 32, "float16"),
              ("adm64_imagenet", 1, "bfloat16"))


def pytest_generate_tests(metafunc):
    if "provider" not in metafunc.fixturenames or "config" not in metafunc.fixturenames:
        return
    points = GPU_POINTS if metafunc.config.getoption("--bench-device") == "cuda" else CPU_POINTS
    if smoke_mode(metafunc.config):
        points = points[:1]
    params, ids = [], []
    for (config, batch, dtype), direction, provider in itertools.product(points, DIRECTIONS, PROVIDERS):
        params.append((config, batch, dtype, direction, provider))
        ids.append(f"{config}-b{batch}-{dtype}-{direction}-{provider}")
    metafunc.parametrize("config,batch,dtype_name,direction,provider", params, ids=ids)


def _model(config: str, device: str, dtype: torch.dtype):
    """(model, precision context): fp32 weights; fp16 through convert_to_fp16, bf16 through autocast."""
    torch.manual_seed(0)
    model = UNetModel(**CONFIGS[config], use_fp16=dtype == torch.float16).to(device)
    with torch.no_grad():  # ADM zero-initialises its output convs: give every layer real (random) weights
        for p in model.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.02)
    if dtype == torch.float16:
        model.convert_to_fp16()
    if dtype == torch.bfloat16:
        return model, lambda: torch.autocast(device, dtype=torch.bfloat16)
    return model, contextlib.nullcontext


def test_unet(benchmark, request, config, batch, dtype_name, direction, provider):
    """Time one UNet forward (no_grad) or forward + backward (loss = sum(out · g)) with `provider`."""
    cfg = request.config
    device, dtype = fb.runnable_or_skip(cfg, None, dtype_name)
    c = CONFIGS[config]
    model, precision = _model(config, device, dtype)
    model.train(direction == "fwdbwd")
    gen = torch.Generator(device=device).manual_seed(1)
    x = fb._randn((batch, c["in_channels"], c["image_size"], c["image_size"]), torch.float32, device, gen)
    t = torch.randint(0, 1000, (batch,), generator=gen, device=device)
    y = torch.randint(0, c["num_classes"], (batch,), generator=gen, device=device) if c.get("num_classes") else None
    g = fb._randn((batch, c["out_channels"], c["image_size"], c["image_size"]), torch.float32, device, gen)
    backend = "auto" if provider == "auto" else "reference"
    fwd = model
    info = benchmark.extra_info
    label = f"{config}-b{batch}"
    info.update(suite="unet", provider=provider, case=f"unet_{direction}", shape=label, dtype=dtype_name,
                device=device, params=sum(p.numel() for p in model.parameters()))
    if provider == "compile":
        info["compile_backend"] = compile_backend(cfg)
        fwd = torch.compile(model, backend=compile_backend(cfg), fullgraph=True)
        fb.configure_dynamo()

    def run():
        with ops.use_backend(backend), precision():
            if direction == "fwd":
                with torch.no_grad():
                    out = fwd(x, t, y)
            else:
                model.zero_grad(set_to_none=True)
                out = fwd(x, t, y)
                out.float().backward(g)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.group = f"unet | {label} | {dtype_name} | {direction}"
    run()  # warm-up (and the compile)
    if smoke_mode(cfg):
        benchmark(run)
        return
    fb.measure(benchmark, lambda _: run(), None, device=device, target_s=5.0, min_rounds=3, max_rounds=15,
               warmup_rounds=1)
