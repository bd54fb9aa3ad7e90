"""fastdiff.patch on guided-diffusion's own UNetModel / EncoderUNetModel (PyPI guided-diffusion-sdk, dev extra).

A patched model must run its ResBlocks, out heads, GroupNorm32s and QKVAttention modules through fastdiff's fused
ops, give the unpatched outputs and gradients (fp32: within 1e-5 of the output scale), and unpatch exactly.
"""
import copy
import warnings

import pytest
import torch

import fastdiff
from fastdiff import ops
from tests.models.conftest import randomize_
from tests.models.test_guided_diffusion_compat import ENCODER_CONFIGS, UNET_CONFIGS

pytestmark = pytest.mark.usefixtures("fused_everywhere")

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # guided_diffusion.nn uses torch.cuda.amp.custom_fwd
    gd_unet = pytest.importorskip("guided_diffusion.unet")

UNSCALED = {  # no scale-shift norm: the ResBlock adds emb before out_norm
    "image_size": 8, "in_channels": 3, "model_channels": 32, "out_channels": 3, "num_res_blocks": 1,
    "attention_resolutions": (2,), "channel_mult": (1, 2), "num_heads": 2, "use_scale_shift_norm": False,
    "resblock_updown": True, "num_classes": 3}
CONFIGS = {**UNET_CONFIGS, "no_scale_shift_updown": UNSCALED}


def _expected_sites(model) -> int:
    """One per GroupNorm32 (two per ResBlock, AttentionBlock norms, the head's) and one per attention."""
    names = [type(m).__name__ for m in model.modules()]
    return names.count("GroupNorm32") + names.count("QKVAttention") + names.count("QKVAttentionLegacy")


def _methods(model) -> dict:
    return {name: (dict(m.__dict__).get("forward"), dict(m.__dict__).get("_forward"))
            for name, m in model.named_modules()}


def _unet(name, seed=0, **over):
    cfg = {**CONFIGS[name], **over}
    torch.manual_seed(seed)
    return randomize_(gd_unet.UNetModel(**cfg)).eval(), cfg


def _inputs(cfg, n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg["in_channels"], cfg["image_size"], cfg["image_size"], generator=g)
    t = torch.rand(n, generator=g) * 999
    y = torch.randint(0, cfg["num_classes"], (n,), generator=g) if cfg.get("num_classes") else None
    return x, t, y


def _close(out, ref, tol=1e-5):
    scale = float(ref.float().abs().max())
    assert scale > 0
    torch.testing.assert_close(out.float(), ref.float(), rtol=0, atol=tol * scale)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_patched_unet_equals_unpatched(name):
    model, cfg = _unet(name)
    x, t, y = _inputs(cfg)
    before = _methods(model)
    with torch.no_grad():
        ref = model(x, t, y)
        n = fastdiff.patch(model)
        assert n == _expected_sites(model) > 0
        _close(model(x, t, y), ref)
    patched = [type(m).__name__ for m in model.modules() if fastdiff.is_patched(m)]
    assert patched.count("ResBlock") == [type(m).__name__ for m in model.modules()].count("ResBlock")
    assert patched.count("SiLU") == 1  # the head's, now the identity
    assert fastdiff.unpatch(model) == len(patched)
    assert _methods(model) == before
    with torch.no_grad():
        assert torch.equal(model(x, t, y), ref)


@pytest.mark.parametrize("name", list(ENCODER_CONFIGS))
def test_patched_encoder_equals_unpatched(name):
    cfg = ENCODER_CONFIGS[name]
    torch.manual_seed(2)
    model = randomize_(gd_unet.EncoderUNetModel(**cfg)).eval()
    x, t, _ = _inputs(cfg, n=3)
    with torch.no_grad():
        ref = model(x, t)
        assert fastdiff.patch(model) == _expected_sites(model)
        _close(model(x, t), ref)
    fastdiff.unpatch(model)
    with torch.no_grad():
        assert torch.equal(model(x, t), ref)


def test_patched_unet_runs_fused_ops(monkeypatch):
    """Every ResBlock norm pair, head, attention norm and attention goes through fastdiff.ops."""
    model, cfg = _unet("adagn_updown_classes_sigma")
    calls = {"adagn": [], "qkv_attention": 0}
    adagn, qkv = ops.adagn, ops.qkv_attention

    def count_adagn(*a, **k):
        calls["adagn"].append((k.get("act"), k.get("scale") is not None))
        return adagn(*a, **k)

    def count_qkv(*a, **k):
        calls["qkv_attention"] += 1
        return qkv(*a, **k)

    monkeypatch.setattr(ops, "adagn", count_adagn)
    monkeypatch.setattr(ops, "qkv_attention", count_qkv)
    fastdiff.patch(model)
    with torch.no_grad():
        model(*_inputs(cfg))
    names = [type(m).__name__ for m in model.modules()]
    n_res, n_attn = names.count("ResBlock"), names.count("AttentionBlock")
    assert calls["qkv_attention"] == n_attn > 0
    # Per ResBlock: GN → SiLU and GN → scale-shift → SiLU; per AttentionBlock: its norm; the head: GN → SiLU.
    assert calls["adagn"].count(("silu", True)) == n_res
    assert calls["adagn"].count(("silu", False)) == n_res + 1
    assert calls["adagn"].count(("none", False)) == n_attn
    assert len(calls["adagn"]) == 2 * n_res + n_attn + 1


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_patched_unet_gradients(use_checkpoint):
    """Parameter and input gradients equal the unpatched model's, with and without gradient checkpointing
    (guided-diffusion's checkpoint calls the instance `_forward` the patch installs)."""
    model, cfg = _unet("adagn_updown_classes_sigma", seed=3, use_checkpoint=use_checkpoint)
    x, t, y = _inputs(cfg)
    w = torch.randn(x.shape[0], cfg["out_channels"], *x.shape[2:])
    grads = []
    for patched in (False, True):
        if patched:
            assert fastdiff.patch(model) > 0
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # guided_diffusion's torch.cuda.amp decorators
            (model(xi, t, y) * w).sum().backward()
        grads.append({"x": xi.grad, **{n: p.grad for n, p in model.named_parameters()}})
    ref, out = grads
    assert all(g is not None for g in ref.values()) and all(g is not None for g in out.values())
    scale = max(float(g.abs().max()) for g in ref.values())
    for n, g in ref.items():
        torch.testing.assert_close(out[n], g, rtol=1e-5, atol=1e-5 * scale, msg=n)


def test_patched_fp16_unet():
    """`convert_to_fp16` (convs in fp16, norms fp32): the fused ops run in fp16 with fp32 statistics."""
    model, cfg = _unet("adagn_updown_classes_sigma", seed=4, use_fp16=True)
    model.convert_to_fp16()
    x, t, y = _inputs(cfg)
    with torch.no_grad():
        ref = model(x, t, y)
        fastdiff.patch(model)
        out = model(x, t, y)
    assert out.dtype == ref.dtype
    _close(out, ref, tol=1e-2)


def test_attention_false_keeps_guided_diffusion_attention():
    model, cfg = _unet("legacy_attention_num_heads")
    n_all = fastdiff.patch(copy.deepcopy(model))
    n = fastdiff.patch(model, attention=False)
    attn = [m for m in model.modules() if type(m).__name__ in ("QKVAttention", "QKVAttentionLegacy")]
    assert attn and n == n_all - len(attn) and not any(fastdiff.is_patched(m) for m in attn)


def test_patch_is_idempotent_and_deepcopies():
    model, cfg = _unet("new_attention_order")
    x, t, y = _inputs(cfg)
    with torch.no_grad():
        ref = model(x, t, y)
    assert fastdiff.patch(model) > 0 and fastdiff.patch(model) == 0
    clone = copy.deepcopy(model)
    blocks = [m for m in clone.modules() if type(m).__name__ == "ResBlock"]
    assert blocks and all(m._forward.__self__ is m for m in blocks)
    with torch.no_grad():
        _close(clone(x, t, y), ref)
    fastdiff.unpatch(clone)
    with torch.no_grad():
        assert torch.equal(clone(x, t, y), ref)


class QKVAttention(torch.nn.Module):
    """improved-diffusion's QKVAttention: no n_heads (the caller folds heads into the batch), qkv [B·H, 3·C, T]."""

    def forward(self, qkv):
        ch = qkv.shape[1] // 3
        q, k, v = torch.split(qkv, ch, dim=1)
        scale = 1 / ch ** 0.25
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1).type(qkv.dtype)
        return torch.einsum("bts,bcs->bct", weight, v)


def test_improved_diffusion_qkv_attention():
    attn = QKVAttention()
    qkv = torch.randn(6, 3 * 16, 37)
    ref = attn(qkv)
    assert fastdiff.patch(attn) == 1 and fastdiff.is_patched(attn)
    _close(attn(qkv), ref)
    assert fastdiff.unpatch(attn) == 1 and torch.equal(attn(qkv), ref)
