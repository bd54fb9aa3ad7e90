"""fastdiff.models against guided-diffusion's own UNetModel / EncoderUNetModel.

The reference is the `guided_diffusion` package of PyPI's `guided-diffusion-sdk` 1.0.0 (in the `dev` extra): a
copy of openai/guided-diffusion whose `unet.py` differs from the original only in AttentionBlock honouring
`use_checkpoint` (the original always checkpoints attention), and whose `nn.CheckpointFunction` is
rewritten; neither changes forward outputs or gradients. Both libraries build the same configuration; the tests
check identical state-dict keys (in order) and shapes, strict loading both ways, and fp32 outputs (and, for
one config per model, parameter gradients) equal within 1e-5 of the output scale, with fastdiff's
`reference` backend and the default `auto` backend.
"""
import warnings

import pytest
import torch

from fastdiff import ops
from fastdiff.models import EncoderUNetModel, UNetModel
from tests.models.conftest import randomize_

with warnings.catch_warnings():
    # guided_diffusion.nn decorates with the deprecated torch.cuda.amp.custom_fwd / custom_bwd.
    warnings.simplefilter("ignore", FutureWarning)
    gd_unet = pytest.importorskip("guided_diffusion.unet")

BACKENDS = ("reference", "auto")

UNET_CONFIGS = {
    # scale-shift norm (AdaGN), BigGAN up/down ResBlocks, class-conditional, learned sigma (out = 2 * in).
    "adagn_updown_classes_sigma": {
        "image_size": 16, "in_channels": 3, "model_channels": 32, "out_channels": 6, "num_res_blocks": 1,
        "attention_resolutions": (2, 4), "channel_mult": (1, 2, 2), "num_head_channels": 16, "num_classes": 5,
        "use_scale_shift_norm": True, "resblock_updown": True},
    # legacy attention order with num_heads (num_head_channels=-1), a separate num_heads_upsample,
    # conv up/downsampling, two ResBlocks per level, channel_mult with a non-integer factor.
    "legacy_attention_num_heads": {
        "image_size": 8, "in_channels": 3, "model_channels": 64, "out_channels": 3, "num_res_blocks": 2,
        "attention_resolutions": (1, 2), "channel_mult": (1, 1.5), "num_heads": 2, "num_heads_upsample": 4},
    # new attention order (q/k/v split before heads), average-pool / nearest resampling without convs.
    "new_attention_order": {
        "image_size": 16, "in_channels": 3, "model_channels": 32, "out_channels": 6, "num_res_blocks": 1,
        "attention_resolutions": (2,), "channel_mult": (1, 2), "num_heads": 4, "use_new_attention_order": True,
        "conv_resample": False, "use_scale_shift_norm": True},
}

ENCODER_CONFIGS = {
    # the guided-diffusion noisy classifier's head: GN, SiLU, AttentionPool2d.
    "attention_pool": {
        "image_size": 16, "in_channels": 3, "model_channels": 32, "out_channels": 10, "num_res_blocks": 1,
        "attention_resolutions": (2, 4), "channel_mult": (1, 2, 2), "num_head_channels": 16,
        "use_scale_shift_norm": True, "resblock_updown": True, "pool": "attention"},
    "adaptive_pool": {
        "image_size": 16, "in_channels": 3, "model_channels": 32, "out_channels": 7, "num_res_blocks": 1,
        "attention_resolutions": (2,), "channel_mult": (1, 2), "num_heads": 2, "pool": "adaptive"},
    "spatial_pool": {
        "image_size": 16, "in_channels": 3, "model_channels": 32, "out_channels": 4, "num_res_blocks": 1,
        "attention_resolutions": (2,), "channel_mult": (1, 2), "num_head_channels": 32, "pool": "spatial"},
    "spatial_v2_pool": {
        "image_size": 16, "in_channels": 3, "model_channels": 32, "out_channels": 4, "num_res_blocks": 1,
        "attention_resolutions": (2,), "channel_mult": (1, 2), "num_heads": 1, "use_new_attention_order": True,
        "use_scale_shift_norm": True, "pool": "spatial_v2"},
}


def _pair(ours_cls, theirs_cls, cfg, seed):
    """The same config in both libraries, eval mode; guided-diffusion's gets random weights, ours loads them."""
    torch.manual_seed(seed)
    theirs = randomize_(theirs_cls(**cfg)).eval()
    ours = ours_cls(**cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _unet_inputs(cfg, n=2):
    x = torch.randn(n, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    t = torch.rand(n) * 999  # fractional timesteps, as respaced samplers pass them
    y = torch.randint(0, cfg["num_classes"], (n,)) if cfg.get("num_classes") else None
    return x, t, y


def _assert_same_output(ours_out, theirs_out):
    assert ours_out.shape == theirs_out.shape and ours_out.dtype == theirs_out.dtype == torch.float32
    scale = float(theirs_out.abs().max())
    assert scale > 0  # random output layers: a real output, not guided-diffusion's zero-initialised one
    torch.testing.assert_close(ours_out, theirs_out, rtol=1e-5, atol=1e-5 * scale)


def _assert_same_layout(ours, theirs):
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    # Same order too: guided-diffusion's EMA and optimiser checkpoints follow parameter order.
    assert list(ours_sd) == list(theirs_sd)
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in theirs_sd.items()}
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]


def _assert_loads_both_ways(ours_cls, theirs_cls, cfg, ours):
    """Ours (fresh random weights) -> a new guided-diffusion model, strict, and back into a fresh fastdiff one."""
    randomize_(ours)
    theirs = theirs_cls(**cfg).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    back = ours_cls(**cfg).eval()
    back.load_state_dict(theirs.state_dict(), strict=True)
    for k, v in ours.state_dict().items():
        assert torch.equal(theirs.state_dict()[k], v) and torch.equal(back.state_dict()[k], v), k
    return theirs


@pytest.mark.parametrize("name", list(UNET_CONFIGS))
def test_unet_state_dict_matches_guided_diffusion(name):
    cfg = UNET_CONFIGS[name]
    ours, theirs = _pair(UNetModel, gd_unet.UNetModel, cfg, seed=0)
    _assert_same_layout(ours, theirs)
    _assert_loads_both_ways(UNetModel, gd_unet.UNetModel, cfg, ours)


@pytest.mark.parametrize("name", list(ENCODER_CONFIGS))
def test_encoder_state_dict_matches_guided_diffusion(name):
    cfg = ENCODER_CONFIGS[name]
    ours, theirs = _pair(EncoderUNetModel, gd_unet.EncoderUNetModel, cfg, seed=0)
    _assert_same_layout(ours, theirs)
    _assert_loads_both_ways(EncoderUNetModel, gd_unet.EncoderUNetModel, cfg, ours)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(UNET_CONFIGS))
def test_unet_output_matches_guided_diffusion(name, backend):
    cfg = UNET_CONFIGS[name]
    ours, theirs = _pair(UNetModel, gd_unet.UNetModel, cfg, seed=1)
    x, t, y = _unet_inputs(cfg)
    with torch.no_grad():
        expected = theirs(x, t, y)
        with ops.use_backend(backend):
            _assert_same_output(ours(x, t, y), expected)
        # The other direction: fastdiff's random weights loaded into guided-diffusion.
        theirs2 = _assert_loads_both_ways(UNetModel, gd_unet.UNetModel, cfg, ours)
        expected2 = theirs2(x, t, y)
        with ops.use_backend(backend):
            _assert_same_output(ours(x, t, y), expected2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(ENCODER_CONFIGS))
def test_encoder_output_matches_guided_diffusion(name, backend):
    cfg = ENCODER_CONFIGS[name]
    ours, theirs = _pair(EncoderUNetModel, gd_unet.EncoderUNetModel, cfg, seed=2)
    x = torch.randn(3, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    t = torch.rand(3) * 999
    with torch.no_grad():
        expected = theirs(x, t)
        with ops.use_backend(backend):
            out = ours(x, t)
    assert out.shape == (3, cfg["out_channels"])
    _assert_same_output(out, expected)


def _assert_same_grads(ours, theirs, run):
    """run(model) -> output; compares d(sum(out * w))/d(param) for every parameter.

    The tolerance is relative to the largest gradient of the model: a conv bias feeding a GroupNorm with one
    channel per group (32 channels) has a gradient that is exactly zero in exact arithmetic, so both sides
    hold only rounding noise there and its own scale is no yardstick.
    """
    torch.manual_seed(3)
    w = None
    grads = []
    for model in (theirs, ours):
        model.zero_grad(set_to_none=True)
        out = run(model)
        if w is None:
            w = torch.randn_like(out)
        (out * w).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    theirs_g, ours_g = grads
    assert list(ours_g) == list(theirs_g)
    assert all(g is not None for g in theirs_g.values()) and all(g is not None for g in ours_g.values())
    scale = max(float(g.abs().max()) for g in theirs_g.values())
    assert scale > 0
    for n, g in theirs_g.items():
        torch.testing.assert_close(ours_g[n], g, rtol=1e-5, atol=1e-5 * scale, msg=n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unet_gradients_match_guided_diffusion(backend):
    cfg = UNET_CONFIGS["adagn_updown_classes_sigma"]
    ours, theirs = _pair(UNetModel, gd_unet.UNetModel, cfg, seed=4)
    x, t, y = _unet_inputs(cfg)
    with ops.use_backend(backend):
        _assert_same_grads(ours, theirs, lambda m: m(x, t, y))


@pytest.mark.parametrize("backend", BACKENDS)
def test_encoder_gradients_match_guided_diffusion(backend):
    cfg = ENCODER_CONFIGS["attention_pool"]
    ours, theirs = _pair(EncoderUNetModel, gd_unet.EncoderUNetModel, cfg, seed=5)
    x = torch.randn(2, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    t = torch.rand(2) * 999
    with ops.use_backend(backend):
        _assert_same_grads(ours, theirs, lambda m: m(x, t))
