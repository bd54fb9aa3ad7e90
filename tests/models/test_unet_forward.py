"""UNetModel / EncoderUNetModel: shapes, attention orders, fp16, checkpointing, round trips, errors."""
import io

import pytest
import torch

from fastdiff import ops
from fastdiff.models import EncoderUNetModel, UNetModel, parse_attention_resolutions
from tests.models.conftest import randomize_

SMALL = {
    "image_size": 16, "in_channels": 3, "model_channels": 32, "out_channels": 6, "num_res_blocks": 1,
    "attention_resolutions": (2, 4), "channel_mult": (1, 2, 2), "num_head_channels": 16,
    "use_scale_shift_norm": True, "resblock_updown": True, "num_classes": 5,
}


def _small(**kw):
    cfg = {**SMALL, **kw}
    return randomize_(UNetModel(**cfg)).eval()


def _inputs(n=2, c=3, size=16, num_classes=5):
    x = torch.randn(n, c, size, size)
    t = torch.randint(0, 1000, (n,)).float() + torch.rand(n)
    y = torch.randint(0, num_classes, (n,)) if num_classes else None
    return x, t, y


def _fill_fast_(model):
    """Random weights for a large model in ~0.5 s: slices of one fresh pool, scaled by 1/sqrt(fan_in).

    (Drawing 296M fresh values takes ~7 s on 2 cores; a finiteness/shape check does not need them.)"""
    pool = torch.rand(2 ** 21) * 2 - 1
    half = 2 ** 20
    with torch.no_grad():
        for p in model.parameters():
            flat = p.view(-1)
            fan_in = p[0].numel() if p.dim() > 1 else 1
            for i in range(0, flat.numel(), half):
                m = min(half, flat.numel() - i)
                off = int(torch.randint(0, half, ()))
                flat[i:i + m].copy_(pool[off:off + m])
            flat.mul_(fan_in ** -0.5)
    return model


def test_imagenet64_adm_forward_batch1():
    """The ImageNet-64 ADM at batch 1: shape, finiteness, and fused backends (auto: the cpu AdaGN and attention
    kernels) agreeing with the plain-PyTorch reference backend."""
    with torch.device("meta"):  # skip the default init of 296M parameters (7 s on 2 cores)
        model = UNetModel(64, 3, 192, 6, 3, parse_attention_resolutions("32,16,8", 64),
                          channel_mult=(1, 2, 3, 4), num_classes=1000, num_head_channels=64,
                          use_scale_shift_norm=True, resblock_updown=True)
    model = _fill_fast_(model.to_empty(device="cpu")).eval()
    assert model.attention_resolutions == (2, 4, 8)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x, torch.tensor([517.0]), torch.tensor([207]))
        with ops.use_backend("reference"):
            ref = model(x, torch.tensor([517.0]), torch.tensor([207]))
    assert out.shape == (1, 6, 64, 64)
    assert torch.isfinite(out).all()
    assert out.std() > 0  # random output layers: not the zero-initialised output
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("kw", [
    {},
    {"use_scale_shift_norm": False, "resblock_updown": False, "num_classes": None, "num_head_channels": -1,
     "num_heads": 2},
    {"conv_resample": False, "resblock_updown": False, "use_new_attention_order": True},
    {"channel_mult": (1, 2), "attention_resolutions": (), "num_res_blocks": 2, "dropout": 0.1},
])
def test_unet_forward_shapes(kw):
    model = _small(**kw)
    x, t, y = _inputs(num_classes=model.num_classes)
    out = model(x, t, y)
    assert out.shape == (2, 6, 16, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # Samples are independent: batch element 1 alone gives the same output.
    one = model(x[1:], t[1:], None if y is None else y[1:])
    torch.testing.assert_close(one, out[1:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dims,shape", [(1, (2, 2, 16)), (3, (2, 2, 3, 8, 8))])
def test_unet_1d_3d(dims, shape):
    model = randomize_(UNetModel(8, 2, 32, 2, 1, (2,), channel_mult=(1, 2), dims=dims, num_heads=2))
    out = model(torch.randn(shape), torch.rand(2) * 1000)
    assert out.shape == shape and torch.isfinite(out).all()


def test_fresh_model_output_is_zero():
    # guided-diffusion zero-initialises the last conv, so an untrained model predicts 0.
    model = UNetModel(16, 3, 32, 3, 1, (2,), channel_mult=(1, 2))
    assert torch.all(model(torch.randn(1, 3, 16, 16), torch.tensor([3])) == 0)


def test_label_changes_output():
    model = _small()
    x, t, _ = _inputs()
    a = model(x, t, torch.tensor([0, 1]))
    b = model(x, t, torch.tensor([2, 3]))
    assert (a - b).abs().max() > 1e-4


def _permute_legacy_to_new(qkv_weight, heads):
    """Rows of a legacy-order qkv conv (head, j, c) reordered to the new order (j, head, c)."""
    ch = qkv_weight.shape[0] // (3 * heads)
    idx = torch.arange(qkv_weight.shape[0]).reshape(heads, 3, ch).transpose(0, 1).reshape(-1)
    return qkv_weight[idx]


def test_legacy_vs_new_attention_order():
    legacy = _small()
    new = UNetModel(**SMALL, use_new_attention_order=True).eval()
    state = legacy.state_dict()
    new.load_state_dict(state, strict=True)
    x, t, y = _inputs()
    ref = legacy(x, t, y)
    assert (new(x, t, y) - ref).abs().max() > 1e-4  # same weights, different head split

    permuted = {}
    n_attn = 0
    for k, v in state.items():
        if k.endswith((".qkv.weight", ".qkv.bias")):
            heads = v.shape[1] // 16 if v.dim() > 1 else v.shape[0] // 48
            v = _permute_legacy_to_new(v, heads)
            n_attn += 1
        permuted[k] = v
    # 7 attention blocks (weight and bias each): at each of ds 2 and 4 one input and two output blocks;
    # and the middle block.
    assert n_attn == 2 * 7
    new.load_state_dict(permuted, strict=True)
    torch.testing.assert_close(new(x, t, y), ref, rtol=1e-5, atol=1e-5)


def test_fp16_conversion():
    model = _small()
    x, t, y = _inputs()
    ref = model(x, t, y)
    model.convert_to_fp16()
    assert model.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
    assert model.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32  # norms stay fp32
    assert model.time_embed[0].weight.dtype == torch.float32 and model.out[2].weight.dtype == torch.float32
    out = model(x, t, y)
    assert out.dtype == torch.float32
    err = (out - ref).norm() / ref.norm()
    assert err < 5e-3, err
    model.convert_to_fp32()  # back to fp32 compute; the weights keep their fp16 rounding
    assert model.input_blocks[1][0].in_layers[2].weight.dtype == torch.float32
    back = model(x, t, y)
    assert ((back - ref).norm() / ref.norm()) < 5e-3


def test_use_fp16_without_conversion_is_a_clear_error():
    model = UNetModel(16, 3, 32, 3, 1, (2,), channel_mult=(1, 2), use_fp16=True)
    with pytest.raises(ValueError, match="convert_to_fp16"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([1]))
    model.convert_to_fp16()
    assert model(torch.randn(1, 3, 16, 16), torch.tensor([1])).dtype == torch.float32


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_gradient_checkpointing_same_gradients(dropout):
    plain = _small(dropout=dropout).train()
    ckpt = UNetModel(**{**SMALL, "dropout": dropout}, use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict(), strict=True)
    x, t, y = _inputs()
    grads, calls = [], []
    for model in (plain, ckpt):
        # Count runs of a conv inside a ResBlock and of one inside an AttentionBlock.
        counts = [0, 0]
        for i, conv in enumerate((model.input_blocks[1][0].in_layers[2], model.middle_block[1].qkv)):
            conv.register_forward_hook(lambda *_, i=i, c=counts: c.__setitem__(i, c[i] + 1))
        calls.append(counts)
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(1234)  # same dropout masks in both runs
        loss = (model(xi, t, y) ** 2).mean()
        loss.backward()
        grads.append([xi.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert grads[0][0].abs().sum() > 0
    assert calls == [[1, 1], [2, 2]]  # checkpointed blocks ran again in backward


def test_state_dict_round_trip():
    model = _small()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = _small()  # different random weights
    x, t, y = _inputs()
    assert not torch.allclose(fresh(x, t, y), model(x, t, y))
    fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    assert torch.equal(fresh(x, t, y), model(x, t, y))


@pytest.mark.parametrize("pool", ["adaptive", "attention", "spatial", "spatial_v2"])
def test_encoder_forward_and_round_trip(pool):
    kw = {"channel_mult": (1, 2, 2), "num_head_channels": 32, "use_scale_shift_norm": True,
          "resblock_updown": True, "pool": pool}
    model = randomize_(EncoderUNetModel(16, 3, 32, 7, 1, (2, 4), **kw)).eval()
    x, t, _ = _inputs(num_classes=None)
    out = model(x, t)
    assert out.shape == (2, 7) and torch.isfinite(out).all() and out.std() > 0
    other = EncoderUNetModel(16, 3, 32, 7, 1, (2, 4), **kw).eval()
    other.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(other(x, t), out)
    model.convert_to_fp16()
    err = (model(x, t) - out).norm() / out.norm()
    assert err < 5e-3, err


@pytest.mark.parametrize("kw,match", [
    ({"model_channels": 48}, "multiple of the 32 GroupNorm groups"),
    ({"channel_mult": (1, 1.5)}, "32 \\* 1.5 = 48"),
    ({"num_head_channels": 48}, "not divisible by num_head_channels 48"),
    ({"num_head_channels": -1, "num_heads": 3}, "not divisible by num_heads 3"),
    ({"attention_resolutions": (3,)}, "3 is not one of the rates"),
    ({"attention_resolutions": (8,)}, "8 is not one of the rates \\[1, 2, 4\\]"),
    ({"attention_resolutions": "16,8"}, "parse_attention_resolutions"),
    ({"dims": 4}, "dims must be 1, 2 or 3"),
])
def test_unet_config_errors(kw, match):
    cfg = {"image_size": 16, "in_channels": 3, "model_channels": 32, "out_channels": 3, "num_res_blocks": 1,
               "attention_resolutions": (2,), "channel_mult": (1, 2, 2), "num_head_channels": 32}
    cfg.update(kw)
    with pytest.raises(ValueError, match=match):
        UNetModel(**cfg)


def test_encoder_and_forward_errors():
    with pytest.raises(ValueError, match="pool must be one of"):
        EncoderUNetModel(16, 3, 32, 3, 1, (2,), channel_mult=(1, 2), pool="max")
    with pytest.raises(ValueError, match="needs num_head_channels"):
        EncoderUNetModel(16, 3, 32, 3, 1, (2,), channel_mult=(1, 2), pool="attention")
    with pytest.raises(ValueError, match="does not divide image_size"):
        parse_attention_resolutions("32,12", 64)
    model = _small()
    x, t, y = _inputs()
    with pytest.raises(ValueError, match="if and only if"):
        model(x, t)
    with pytest.raises(ValueError, match="timesteps must have shape \\[2\\]"):
        model(x, t[:1], y)
    enc = EncoderUNetModel(16, 3, 32, 3, 1, (2,), channel_mult=(1, 2), num_head_channels=32, pool="attention")
    with pytest.raises(ValueError, match="positional embedding"):
        enc(torch.randn(1, 3, 32, 32), torch.tensor([1]))
