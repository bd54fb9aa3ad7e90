"""State-dict keys and shapes equal guided-diffusion's, so its checkpoints load with strict=True."""
import pytest
import torch

from fastdiff.models import EncoderUNetModel, UNetModel
from tests.models import _spec


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _rb(p, cin, cout, skip):
    """ResBlock keys of the tiny config (emb 128, no scale-shift), written out in full."""
    keys = [(f"{p}.in_layers.0.weight", (cin,)), (f"{p}.in_layers.0.bias", (cin,)),
            (f"{p}.in_layers.2.weight", (cout, cin, 3, 3)), (f"{p}.in_layers.2.bias", (cout,)),
            (f"{p}.emb_layers.1.weight", (cout, 128)), (f"{p}.emb_layers.1.bias", (cout,)),
            (f"{p}.out_layers.0.weight", (cout,)), (f"{p}.out_layers.0.bias", (cout,)),
            (f"{p}.out_layers.3.weight", (cout, cout, 3, 3)), (f"{p}.out_layers.3.bias", (cout,))]
    if skip:
        keys += [(f"{p}.skip_connection.weight", (cout, cin, 1, 1)), (f"{p}.skip_connection.bias", (cout,))]
    return keys


def _at(p, c):
    return [(f"{p}.norm.weight", (c,)), (f"{p}.norm.bias", (c,)), (f"{p}.qkv.weight", (3 * c, c, 1)),
            (f"{p}.qkv.bias", (3 * c,)), (f"{p}.proj_out.weight", (c, c, 1)), (f"{p}.proj_out.bias", (c,))]


# UNetModel(16, 3, 32, 3, num_res_blocks=1, attention_resolutions=(2,), channel_mult=(1, 2), num_heads=2):
# every key of guided-diffusion's model, in its registration order.
TINY = (
    [("time_embed.0.weight", (128, 32)), ("time_embed.0.bias", (128,)),
     ("time_embed.2.weight", (128, 128)), ("time_embed.2.bias", (128,)),
     ("input_blocks.0.0.weight", (32, 3, 3, 3)), ("input_blocks.0.0.bias", (32,))]
    + _rb("input_blocks.1.0", 32, 32, False)
    + [("input_blocks.2.0.op.weight", (32, 32, 3, 3)), ("input_blocks.2.0.op.bias", (32,))]
    + _rb("input_blocks.3.0", 32, 64, True) + _at("input_blocks.3.1", 64)
    + _rb("middle_block.0", 64, 64, False) + _at("middle_block.1", 64) + _rb("middle_block.2", 64, 64, False)
    + _rb("output_blocks.0.0", 128, 64, True) + _at("output_blocks.0.1", 64)
    + _rb("output_blocks.1.0", 96, 64, True) + _at("output_blocks.1.1", 64)
    + [("output_blocks.1.2.conv.weight", (64, 64, 3, 3)), ("output_blocks.1.2.conv.bias", (64,))]
    + _rb("output_blocks.2.0", 96, 32, True)
    + _rb("output_blocks.3.0", 64, 32, True)
    + [("out.0.weight", (32,)), ("out.0.bias", (32,)), ("out.2.weight", (3, 32, 3, 3)), ("out.2.bias", (3,))]
)


def test_tiny_unet_keys_in_order():
    model = UNetModel(16, 3, 32, 3, 1, (2,), channel_mult=(1, 2), num_heads=2)
    assert list(_shapes(model).items()) == TINY
    assert len(TINY) == 128


IMAGENET64 = {
    "image_size": 64, "in_channels": 3, "model_channels": 192, "out_channels": 6, "num_res_blocks": 3,
    "attention_resolutions": (2, 4, 8), "channel_mult": (1, 2, 3, 4), "num_classes": 1000,
    "num_head_channels": 64, "use_scale_shift_norm": True, "resblock_updown": True,
}


def test_imagenet64_adm_keys():
    with torch.device("meta"):  # layout only: no memory, no init time
        model = UNetModel(**IMAGENET64)
    got = _shapes(model)
    assert got == _spec.unet(3, 192, 6, 3, (2, 4, 8), (1, 2, 3, 4), ss=True, updown=True, num_classes=1000)
    assert len(got) == 541
    assert sum(v.numel() for v in model.state_dict().values()) == 295_904_454
    # Spot checks worked out by hand from guided-diffusion's construction loop.
    assert got["label_emb.weight"] == (1000, 768)
    assert got["input_blocks.4.0.in_layers.2.weight"] == (192, 192, 3, 3)  # BigGAN down block, level 0
    assert "input_blocks.4.0.skip_connection.weight" not in got
    assert got["input_blocks.5.0.skip_connection.weight"] == (384, 192, 1, 1)
    assert got["input_blocks.5.1.qkv.weight"] == (1152, 384, 1)  # attention at ds 2
    assert "input_blocks.1.1.qkv.weight" not in got  # no attention at ds 1
    assert got["middle_block.1.qkv.weight"] == (2304, 768, 1)
    assert got["middle_block.0.emb_layers.1.weight"] == (1536, 768)  # scale and shift
    assert got["output_blocks.0.0.in_layers.0.weight"] == (1536,)
    assert got["output_blocks.3.0.in_layers.0.weight"] == (1344,)  # 768 + 576 from the level-2 down block
    assert got["output_blocks.3.2.emb_layers.1.weight"] == (1536, 768)  # BigGAN up block after attention
    assert got["output_blocks.11.2.in_layers.2.weight"] == (384, 384, 3, 3)
    assert "output_blocks.12.1.qkv.weight" not in got and "output_blocks.15.0.in_layers.0.weight" in got
    assert got["out.2.weight"] == (6, 192, 3, 3)


@pytest.mark.parametrize("cfg", [
    {"in_ch": 3, "mc": 64, "out_ch": 6, "nrb": 2, "attn": (2, 4), "mult": (1, 2, 2), "ss": True,
     "updown": True, "num_classes": 10},
    {"in_ch": 1, "mc": 64, "out_ch": 1, "nrb": 1, "attn": (), "mult": (1, 1.5, 2), "conv_resample": False},
    {"in_ch": 3, "mc": 128, "out_ch": 3, "nrb": 2, "attn": (4,), "mult": (0.5, 1, 1, 2)},
    {"in_ch": 2, "mc": 32, "out_ch": 4, "nrb": 1, "attn": (2,), "mult": (1, 2), "dims": 1},
    {"in_ch": 2, "mc": 32, "out_ch": 2, "nrb": 1, "attn": (2,), "mult": (1, 2), "dims": 3, "ss": True},
])
def test_unet_keys(cfg):
    c = dict(cfg)
    kwargs = {"channel_mult": c["mult"], "use_scale_shift_norm": c.get("ss", False),
              "resblock_updown": c.get("updown", False), "num_classes": c.get("num_classes"),
              "conv_resample": c.get("conv_resample", True), "dims": c.get("dims", 2),
              "num_head_channels": 32}
    with torch.device("meta"):
        model = UNetModel(32, c["in_ch"], c["mc"], c["out_ch"], c["nrb"], c["attn"], **kwargs)
    assert _shapes(model) == _spec.unet(**cfg)


def test_classifier_attention_pool_keys():
    # guided-diffusion's 64x64 noisy classifier shape, narrowed: width 64, depth 2, attention 32/16/8.
    with torch.device("meta"):
        model = EncoderUNetModel(64, 3, 64, 1000, 2, (2, 4, 8), channel_mult=(1, 2, 3, 4),
                                 num_head_channels=64,
                                 use_scale_shift_norm=True, resblock_updown=True, pool="attention")
    got = _shapes(model)
    assert got == _spec.encoder(64, 3, 64, 1000, 2, (2, 4, 8), (1, 2, 3, 4), ss=True, updown=True,
                                pool="attention", num_head_channels=64)
    assert got["out.2.positional_embedding"] == (256, 8 * 8 + 1)
    assert got["out.2.qkv_proj.weight"] == (768, 256, 1)
    assert got["out.2.c_proj.weight"] == (1000, 256, 1)
    assert not any(k.startswith(("output_blocks", "label_emb")) for k in got)


@pytest.mark.parametrize("pool", ["adaptive", "spatial", "spatial_v2"])
def test_encoder_pool_keys(pool):
    with torch.device("meta"):
        model = EncoderUNetModel(32, 3, 32, 5, 1, (4,), channel_mult=(1, 2, 2), pool=pool)
    got = _shapes(model)
    assert got == _spec.encoder(32, 3, 32, 5, 1, (4,), (1, 2, 2), pool=pool)
    if pool.startswith("spatial"):
        # feature size: every input block's channels plus the middle block's: 32 + 32 + 32 + 64 + 64 + 64 + 64
        assert got["out.0.weight"] == (2048, 352)
