"""fastdiff.patch on the diffusers models people run — UNet2DConditionModel (SD 1.5, SDXL), DiT, PixArt, SD3 and
Flux transformers, AutoencoderKL — built from tiny local configs: the patched model computes the stock function
(forward and gradients) through the fused adaln_modulate / geglu / attention / adagn ops, and unpatch restores it
exactly."""
from __future__ import annotations

import copy
import hashlib
import importlib
import inspect

import pytest
import torch
from torch import nn

import fastdiff
from fastdiff import ops

pytestmark = pytest.mark.usefixtures("fused_everywhere")
diffusers = pytest.importorskip("diffusers")
from diffusers import (DiTTransformer2DModel, LTXVideoTransformer3DModel, PixArtTransformer2DModel,  # noqa: E402
                       WanTransformer3DModel)
from diffusers.models.activations import GEGLU  # noqa: E402
from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock  # noqa: E402
from diffusers.models.attention_processor import Attention, AttnProcessor2_0  # noqa: E402
from diffusers.models.normalization import (AdaLayerNormContinuous, AdaLayerNormZero,  # noqa: E402
                                            AdaLayerNormZeroSingle)
from diffusers.models.resnet import ResnetBlock2D  # noqa: E402
from diffusers.models.transformers.transformer_2d import Transformer2DModel  # noqa: E402
from diffusers.models.transformers.transformer_flux import FluxAttention, FluxTransformerBlock  # noqa: E402
from diffusers.models.transformers.transformer_ltx import LTXVideoTransformerBlock  # noqa: E402
from diffusers.models.transformers.transformer_wan import WanTransformerBlock  # noqa: E402

from fastdiff.adapters import diffusers_blocks  # noqa: E402
from tests.adapters import _tiny_pipelines as tiny  # noqa: E402
from tests.adapters.test_patch import _randomize_  # noqa: E402


def _gen(seed=3):
    return torch.Generator().manual_seed(seed)


def _sd_unet():
    unet = tiny.tiny_sd()[0].unet
    g = _gen()
    args = dict(sample=torch.randn(2, 4, 8, 8, generator=g), timestep=torch.tensor([10, 700]),
                encoder_hidden_states=torch.randn(2, 7, 16, generator=g))
    return unet, args


def _sdxl_unet():
    unet = tiny.tiny_sdxl()[0].unet
    g = _gen()
    args = dict(sample=torch.randn(2, 4, 8, 8, generator=g), timestep=torch.tensor([10, 700]),
                encoder_hidden_states=torch.randn(2, 7, 24, generator=g),
                added_cond_kwargs={"text_embeds": torch.randn(2, 16, generator=g),
                                   "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2)})
    return unet, args


def _dit():
    torch.manual_seed(0)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                  num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000)
    g = _gen()
    return model, dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g), timestep=torch.tensor([10, 700]),
                       class_labels=torch.tensor([1, 3]))


def _pixart():
    torch.manual_seed(0)
    model = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                     num_layers=2, sample_size=8, patch_size=2, cross_attention_dim=16,
                                     caption_channels=12, num_embeds_ada_norm=1000, attention_bias=True)
    g = _gen()
    return model, dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g), timestep=torch.tensor([10, 700]),
                       encoder_hidden_states=torch.randn(2, 5, 12, generator=g),
                       added_cond_kwargs={"resolution": None, "aspect_ratio": None})


def _sd3():
    model = tiny.tiny_sd3()[0].transformer
    g = _gen()
    return model, dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g), timestep=torch.tensor([10.0, 700.0]),
                       encoder_hidden_states=torch.randn(2, 7, 16, generator=g),
                       pooled_projections=torch.randn(2, 16, generator=g))


def _flux():
    model = tiny.tiny_flux()[0].transformer
    g = _gen()
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    return model, dict(hidden_states=torch.randn(2, 16, 4, generator=g), timestep=torch.tensor([0.1, 0.7]),
                       encoder_hidden_states=torch.randn(2, 7, 16, generator=g),
                       pooled_projections=torch.randn(2, 16, generator=g), guidance=torch.tensor([3.5, 3.5]),
                       img_ids=ids.reshape(16, 3), txt_ids=torch.zeros(7, 3))


def _wan():
    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    g = _gen()
    return model, dict(hidden_states=torch.randn(2, 4, 2, 8, 8, generator=g), timestep=torch.tensor([10, 700]),
                       encoder_hidden_states=torch.randn(2, 7, 16, generator=g))


def _ltx():
    torch.manual_seed(0)
    model = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                       num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                       num_layers=2, caption_channels=16, qk_norm="rms_norm_across_heads")
    g = _gen()
    return model, dict(hidden_states=torch.randn(2, 2 * 4 * 4, 8, generator=g), timestep=torch.tensor([10, 700]),
                       encoder_hidden_states=torch.randn(2, 7, 16, generator=g),
                       encoder_attention_mask=torch.ones(2, 7), num_frames=2, height=4, width=4)


def _vae():
    model = tiny._tiny_vae_2()
    return model, dict(sample=torch.randn(2, 3, 16, 16, generator=_gen()))


MODELS = {"sd-unet": _sd_unet, "sdxl-unet": _sdxl_unet, "dit": _dit, "pixart": _pixart, "sd3": _sd3,
          "flux": _flux, "wan": _wan, "ltx": _ltx, "vae": _vae}
BLOCKS = (BasicTransformerBlock, JointTransformerBlock, FluxTransformerBlock, WanTransformerBlock,
          LTXVideoTransformerBlock)
ADALN = (AdaLayerNormZero, AdaLayerNormZeroSingle, AdaLayerNormContinuous)


def _modulated_norms(block) -> list:
    """The norms a patched block's or adaLN module's fused forward computes: DiT's feed-forward norm, PixArt's two,
    none of the plain LayerNorm blocks of SD's UNets, the norm2 (and norm2_context) of SD3 and Flux blocks and the
    LayerNorm of adaLN modules, Wan's fp32 LayerNorms before the self-attention and the feed-forward, LTX's two
    RMSNorms."""
    if isinstance(block, BasicTransformerBlock):
        if block.norm_type == "ada_norm_zero":
            return [block.norm3]
        return [block.norm1, block.norm2] if block.norm_type == "ada_norm_single" else []
    if isinstance(block, WanTransformerBlock):
        return [block.norm1, block.norm3]
    if isinstance(block, LTXVideoTransformerBlock):
        return [block.norm1, block.norm2]
    if isinstance(block, (JointTransformerBlock, FluxTransformerBlock, *ADALN)):
        return [c for c in block.children() if type(c) is nn.LayerNorm]
    return []


def _build(name):
    model, args = MODELS[name]()
    return _randomize_(model).eval(), args


def _run(model, args):
    out = model(**copy.copy(args))
    return out.sample if hasattr(out, "sample") else out[0]


def _expected_sites(model: nn.Module) -> int:
    """Counted from the model's structure: 2 per ResnetBlock2D, 1 per GroupNorm → SiLU head, per Transformer2DModel
    GroupNorm, per adaLN module, per GEGLU and per attention (diffusers' Attention, FluxAttention), and the norms of
    each transformer block (`_modulated_norms`)."""
    n = 0
    for m in model.modules():
        if isinstance(m, ResnetBlock2D):
            n += 2
        elif isinstance(m, (*ADALN, GEGLU, Attention, FluxAttention)):
            n += 1
        elif isinstance(m, BLOCKS):
            n += len(_modulated_norms(m))
        elif isinstance(m, Transformer2DModel) and isinstance(getattr(m, "norm", None), nn.GroupNorm):
            n += 1
        if isinstance(getattr(m, "conv_norm_out", None), nn.GroupNorm):
            n += 1
    return n


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_patched_equals_stock_and_unpatch_restores(name):
    model, args = _build(name)
    processors = {n: m.processor for n, m in model.named_modules() if hasattr(m, "processor")}
    state = _state(model)
    with torch.no_grad():
        ref = _run(model, args)
        sites = fastdiff.patch(model)
        assert sites == _expected_sites(model) > 0
        assert fastdiff.patch(model) == 0  # idempotent
        out = _run(model, args)
        torch.testing.assert_close(out, ref, rtol=0, atol=2e-5 * ref.abs().max().item())
        assert fastdiff.unpatch(model) > 0
        assert torch.equal(_run(model, args), ref)
    assert not any(fastdiff.is_patched(m) or "forward" in m.__dict__ for m in model.modules())
    assert all(m.processor is processors[n] for n, m in model.named_modules() if hasattr(m, "processor"))
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())


@pytest.mark.parametrize("name", list(MODELS))
def test_the_fused_ops_run(name, monkeypatch):
    """Spies on the fused ops: the patched model calls them, and no stock attention processor, adaLN LayerNorm
    expression or GEGLU forward is left on the covered paths."""
    model, args = _build(name)
    fastdiff.patch(model)
    calls = {op: 0 for op in ("adaln_modulate", "geglu", "attention", "adagn")}
    for op in calls:
        real = getattr(ops, op)

        def spy(*a, _real=real, _op=op, **k):
            calls[_op] += 1
            return _real(*a, **k)

        monkeypatch.setattr(ops, op, spy)
    stock = []
    monkeypatch.setattr(AttnProcessor2_0, "__call__", lambda *a, **k: stock.append("attn"))
    monkeypatch.setattr(GEGLU, "forward", lambda *a, **k: stock.append("geglu"))
    hooks = [m.register_forward_hook(lambda *a: stock.append("norm")) for blk in model.modules()
             for m in _modulated_norms(blk)]
    with torch.no_grad():
        _run(model, args)
    for h in hooks:
        h.remove()
    assert stock == []
    n_attn = sum(isinstance(m, (Attention, FluxAttention)) for m in model.modules())
    assert calls["attention"] == n_attn
    n_geglu = sum(isinstance(m, GEGLU) for m in model.modules())
    assert calls["geglu"] == n_geglu
    n_adaln = sum(isinstance(m, ADALN) for m in model.modules())
    n_block_norms = sum(len(_modulated_norms(m)) for m in model.modules() if isinstance(m, BLOCKS))
    assert calls["adaln_modulate"] == n_adaln + n_block_norms
    if name in ("sd-unet", "sdxl-unet", "vae"):
        assert calls["adagn"] > 0


@pytest.mark.parametrize("name", ["sd-unet", "dit", "flux"])
def test_patched_gradients_equal_stock(name):
    """Training through a patched model: every parameter's gradient equals the stock model's."""
    model, args = _build(name)
    patched = copy.deepcopy(model)
    assert fastdiff.patch(patched) > 0
    grads = []
    for m in (model, patched):
        m.zero_grad()
        _run(m, args).square().mean().backward()
        grads.append({k: p.grad for k, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for k, g in grads[0].items():
        torch.testing.assert_close(grads[1][k], g, rtol=1e-4, atol=1e-5 * (g.abs().max().item() + 1e-3), msg=k)


def test_channels_last_unet():
    """A channels-last SD UNet input gives the stock result (the fused GroupNorms keep the layout)."""
    model, args = _build("sd-unet")
    model = model.to(memory_format=torch.channels_last)
    args["sample"] = args["sample"].to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = _run(model, args)
        fastdiff.patch(model)
        out = _run(model, args)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5 * ref.abs().max().item())


def test_uncovered_calls_take_the_stock_path():
    """An attention mask, autocast, or a dtype that upstream would promote run diffusers' own code."""
    model, args = _build("pixart")
    mask = torch.ones(2, 5)
    mask[:, 3:] = 0
    with torch.no_grad():
        ref = _run(model, {**args, "encoder_attention_mask": mask})
        fastdiff.patch(model)
        out = _run(model, {**args, "encoder_attention_mask": mask})
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5 * ref.abs().max().item())
    norm = nn.LayerNorm(8, elementwise_affine=False)
    x, scale = torch.randn(2, 3, 8), torch.randn(2, 8, dtype=torch.float64)
    expected = norm(x) * (1 + scale[:, None])
    got = diffusers_blocks.modulate(norm, x, scale, scale)
    assert got.dtype == torch.float64 and torch.equal(got, expected + scale[:, None])


def test_sd3_last_block_is_context_pre_only():
    """SD3's last block keeps no text stream: one fused norm, and the block returns None for it."""
    model, args = _build("sd3")
    last = model.transformer_blocks[-1]
    assert last.context_pre_only
    assert diffusers_blocks.joint_block_sites(last) == 1


@pytest.mark.parametrize("qualname", list(diffusers_blocks.UPSTREAM))
def test_fused_forwards_follow_the_installed_diffusers(qualname):
    """Each fused forward follows one upstream method (UPSTREAM); the installed diffusers, pinned to the tested
    range, still has exactly that source."""
    module, cls, method = qualname.rsplit(".", 2)
    source = inspect.getsource(getattr(getattr(importlib.import_module(module), cls), method))
    assert hashlib.sha256(source.encode()).hexdigest() == diffusers_blocks.UPSTREAM[qualname], (
        f"diffusers {diffusers.__version__} changed {qualname}: re-sync fastdiff/adapters/diffusers_blocks.py")


@pytest.mark.parametrize("name", ["sd-unet", "dit", "flux"])
def test_small_cpu_tensors_take_the_upstream_code(name, monkeypatch):
    """Below CPU_FUSED_MIN_NUMEL elements a patched forward on the CPU runs upstream's code: bitwise the stock
    result, no fused op called; above it the fused ops run."""
    model, args = _build(name)
    with torch.no_grad():
        ref = _run(model, args)
    fastdiff.patch(model)
    calls = []
    for op in ("adaln_modulate", "geglu", "attention", "adagn"):
        real = getattr(ops, op)
        monkeypatch.setattr(ops, op, lambda *a, _real=real, _op=op, **k: calls.append(_op) or _real(*a, **k))
    monkeypatch.setattr(diffusers_blocks, "CPU_FUSED_MIN_NUMEL", 1 << 40)
    with torch.no_grad():
        assert torch.equal(_run(model, args), ref)
    assert calls == []
    monkeypatch.setattr(diffusers_blocks, "CPU_FUSED_MIN_NUMEL", 0)
    with torch.no_grad():
        _run(model, args)
    assert calls
