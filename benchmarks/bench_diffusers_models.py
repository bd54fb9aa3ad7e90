"""diffusers denoisers, one no-grad forward: stock vs `fastdiff.patch(model)` (fused GroupNorm+SiLU, adaLN
modulate with gated residuals, GEGLU, attention), and (CUDA) torch.compile's default mode of the stock model.

Models (random weights from a fixed seed, no downloads; timestep, text embeddings and class labels random):
- `sd_unet_tiny` / `dit_tiny`: the tiny UNet2DConditionModel of tests/adapters/_tiny_pipelines.py (channels 4/8)
  and a 2-layer DiT (hidden 16): Python / module overhead only — the patched model must not be slower;
- `sd_unet_small`: UNet2DConditionModel with channels 64/128, 2 heads per level, GEGLU feed-forwards, cross-
  attention to 77 tokens of width 128, 32x32 latents, batch 2 (the CFG batch);
- `dit_s2`: DiT-S/2 (hidden 384, 6 heads, 12 layers), 32x32 latents (256 tokens), batch 2;
- CUDA only: `sd15_unet` (SD 1.5's UNet config: 320/640/1280/1280, 8 heads, cross-attention 768) at 64x64 latents,
  batch 2, fp16; `dit_xl2` (DiT-XL/2: hidden 1152, 16 heads, 28 layers) at 32x32 latents, batch 2, fp16.

Providers: `diffusers` (stock, the baseline), `auto` (the same model after `fastdiff.patch`; rows record the
largest difference from stock and the site count), `compile` (torch.compile(model) of the stock model, CUDA only:
on 2 CPU cores its compile takes minutes per model).
"""
from __future__ import annotations

import sys
from pathlib import Path

import fastdiff_bench as fb
import pytest
import torch
from conftest import smoke_mode

TINY_PIPELINES = Path(__file__).resolve().parent.parent / "tests" / "adapters"
PROVIDERS = ("diffusers", "auto", "compile")
CPU_MODELS = ("sd_unet_tiny", "dit_tiny", "sd_unet_small", "dit_s2")
GPU_MODELS = ("sd15_unet", "dit_xl2", "sd_unet_small", "dit_s2")


def _unet(channels, heads, cross_dim, groups, size):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=size, in_channels=4, out_channels=4, block_out_channels=channels,
        layers_per_block=2 if len(channels) == 4 else 1, norm_num_groups=groups, cross_attention_dim=cross_dim,
        attention_head_dim=heads,
        down_block_types=("CrossAttnDownBlock2D",) * (len(channels) - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(channels) - 1))


def _dit(layers, heads, head_dim):
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4,
                                 out_channels=8, num_layers=layers, sample_size=32, patch_size=2,
                                 num_embeds_ada_norm=1000)


def _build(name: str, device: str, dtype: torch.dtype):
    """(model, forward kwargs) on `device` in `dtype`."""
    pytest.importorskip("diffusers", reason="diffusers: not installed (pip install diffusers)")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    unet_inputs = lambda size, tokens, width: dict(
        sample=torch.randn(2, 4, size, size, generator=g), timestep=torch.tensor([10, 700]),
        encoder_hidden_states=torch.randn(2, tokens, width, generator=g))
    dit_inputs = lambda size: dict(hidden_states=torch.randn(2, 4, size, size, generator=g),
                                   timestep=torch.tensor([10, 700]), class_labels=torch.tensor([1, 3]))
    if name == "sd_unet_tiny":
        sys.path.insert(0, str(TINY_PIPELINES))
        try:
            import _tiny_pipelines as tiny
        finally:
            sys.path.remove(str(TINY_PIPELINES))
        model, inputs = tiny.tiny_sd()[0].unet, unet_inputs(8, 7, 16)
    elif name == "dit_tiny":
        from diffusers import DiTTransformer2DModel

        model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                      num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000)
        inputs = dit_inputs(8)
    elif name == "sd_unet_small":
        model, inputs = _unet((64, 128), 2, 128, 32, 32), unet_inputs(32, 77, 128)
    elif name == "dit_s2":
        model, inputs = _dit(12, 6, 64), dit_inputs(32)
    elif name == "sd15_unet":
        model, inputs = _unet((320, 640, 1280, 1280), 8, 768, 32, 64), unet_inputs(64, 77, 768)
    elif name == "dit_xl2":
        model, inputs = _dit(28, 16, 72), dit_inputs(32)
    else:
        raise ValueError(name)
    model = model.eval().to(device=device, dtype=dtype)
    inputs = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
    return model, inputs


def pytest_generate_tests(metafunc):
    if "model_name" not in metafunc.fixturenames:
        return
    cuda = metafunc.config.getoption("--bench-device") == "cuda"
    models = GPU_MODELS if cuda else CPU_MODELS
    if smoke_mode(metafunc.config):
        models = models[:2]
    metafunc.parametrize("model_name", models)
    metafunc.parametrize("provider", PROVIDERS)


def test_model_forward(benchmark, request, model_name, provider):
    """One no-grad forward of a diffusers denoiser: stock, patched, or (CUDA) torch.compile of stock."""
    device, _ = fb.runnable_or_skip(request.config, None)
    if provider == "compile" and device != "cuda":
        pytest.skip("compile: not run on the CPU (minutes of compile per model on 2 cores)")
    dtype = torch.float16 if device == "cuda" and model_name in ("sd15_unet", "dit_xl2") else torch.float32
    import fastdiff

    model, inputs = _build(model_name, device, dtype)

    def forward(m):
        out = m(**inputs)
        return out.sample if hasattr(out, "sample") else out[0]

    with torch.no_grad():
        stock = forward(model)
    target = model
    if provider == "auto":
        benchmark.extra_info["sites"] = fastdiff.patch(model)
        request.addfinalizer(lambda: fastdiff.unpatch(model))
    elif provider == "compile":
        target = torch.compile(model)

    def call():
        with torch.no_grad():
            return forward(target)

    run = fb.synced(call, device)
    out = run()  # warm-up (compile: compiles)
    if provider != "diffusers":
        benchmark.extra_info["max_abs_diff_vs_diffusers"] = float((out.float() - stock.float()).abs().max())
    dtype_name = str(dtype).removeprefix("torch.")
    benchmark.group = f"{model_name} | fwd-b2 | {dtype_name}"
    benchmark.extra_info.update(suite="models", provider=provider, case=model_name, shape="fwd-b2", dtype=dtype_name,
                                device=device, baseline="diffusers", threads=torch.get_num_threads())
    if smoke_mode(request.config):
        benchmark(run)
        return
    fb.measure(benchmark, lambda _: run(), None, device=device, target_s=2.0, min_rounds=5, max_rounds=50)
