"""fastdiff.patch / unpatch: a patched model computes the same function (forward and gradients) through the fused
adagn op, and unpatch restores the original exactly."""
import copy

import pytest
import torch
from torch import nn

import fastdiff
from fastdiff import ops
from fastdiff.adapters import FusedAttnProcessor

pytestmark = pytest.mark.usefixtures("fused_everywhere")
diffusers = pytest.importorskip("diffusers")
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.resnet import ResnetBlock2D


def _randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values for every 1-D parameter (GroupNorm γ around 1, β, biases), which start as constants; matrices
    and kernels keep their (already random, well-scaled) default initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
    return model


def _unet(scale_shift: bool, nonlinearity: str = "silu") -> UNet2DModel:
    model = UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=16, act_fn=nonlinearity,
        resnet_time_scale_shift="scale_shift" if scale_shift else "default")
    return _randomize_(model).eval()


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 16, 16, generator=g)
    t = torch.randint(0, 1000, (2,), generator=g)
    return x, t


def _forwards(model: nn.Module) -> dict:
    """Every module's own instance `forward` attribute (absent for most), and the module objects, by name."""
    return {name: (m, m.__dict__.get("forward")) for name, m in model.named_modules()}


def _n_resnets(model: nn.Module) -> int:
    return sum(isinstance(m, ResnetBlock2D) for m in model.modules())


def _n_attn(model: nn.Module) -> int:
    return sum(isinstance(m, Attention) for m in model.modules())


def _sites(model: nn.Module) -> int:
    """norm1 and norm2 of every ResnetBlock2D, conv_norm_out + conv_act, and every attention."""
    return 2 * _n_resnets(model) + 1 + _n_attn(model)


def _restored(model: nn.Module) -> int:
    """Modules unpatch restores: each ResnetBlock2D, the head's norm and SiLU, each attention."""
    return _n_resnets(model) + 2 + _n_attn(model)


def _processors(model: nn.Module) -> dict:
    return {name: m.processor for name, m in model.named_modules() if isinstance(m, Attention)}


@pytest.mark.parametrize("scale_shift", [False, True], ids=["default", "scale_shift"])
def test_diffusers_unet2d_patched_equals_unpatched(scale_shift):
    model = _unet(scale_shift)
    x, t = _inputs()
    with torch.no_grad():
        ref = model(x, t).sample
    n = fastdiff.patch(model)
    assert _n_attn(model) == 4 and n == _sites(model)
    assert all(fastdiff.is_patched(m) for m in model.modules() if isinstance(m, ResnetBlock2D))
    with torch.no_grad():
        out = model(x, t).sample
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


def test_patched_model_runs_fused_ops(monkeypatch):
    """The patched model really goes through fastdiff.ops.adagn / attention: no nn.GroupNorm forward and no
    stock attention processor is left."""
    model = _unet(True)
    fastdiff.patch(model)
    calls, attn_calls, proc_calls = [], [], []
    real, real_attn, real_proc = ops.adagn, ops.attention, AttnProcessor2_0.__call__

    def spy(*args, **kwargs):
        calls.append(kwargs.get("act"))
        return real(*args, **kwargs)

    def spy_attn(*args, **kwargs):
        attn_calls.append(args[3])  # heads
        return real_attn(*args, **kwargs)

    def spy_proc(*args, **kwargs):
        proc_calls.append(1)
        return real_proc(*args, **kwargs)

    monkeypatch.setattr(ops, "adagn", spy)
    monkeypatch.setattr(ops, "attention", spy_attn)
    monkeypatch.setattr(AttnProcessor2_0, "__call__", spy_proc)
    gn_calls = []
    handles = [m.register_forward_hook(lambda *a: gn_calls.append(1))
               for m in model.modules() if isinstance(m, nn.GroupNorm) and not fastdiff.is_patched(m)]
    x, t = _inputs()
    with torch.no_grad():
        model(x, t)
    for h in handles:
        h.remove()
    assert calls.count("silu") == 2 * _n_resnets(model) + 1
    # the attention blocks' group norms (diffusers' mid block has none with scale_shift)
    n_attn_norms = sum(isinstance(m, Attention) and m.group_norm is not None for m in model.modules())
    assert 0 < n_attn_norms and calls.count("none") == n_attn_norms
    assert attn_calls == [m.heads for m in model.modules() if isinstance(m, Attention)]
    assert gn_calls == [] and proc_calls == []


def test_attention_false_leaves_processors():
    model = _unet(False)
    before = _processors(model)
    assert fastdiff.patch(model, attention=False) == 2 * _n_resnets(model) + 1
    assert _processors(model) == before
    assert all(type(p) is AttnProcessor2_0 for p in before.values())
    assert fastdiff.patch(model) == _n_attn(model)  # the attentions alone, on a second call
    assert all(type(p) is FusedAttnProcessor for p in _processors(model).values())
    fastdiff.unpatch(model)
    after = _processors(model)
    assert all(after[k] is v for k, v in before.items())


def test_attention_fallback_calls_original():
    """Calls the fused processor does not cover (here an attention mask) give the original result; cross-attention
    is fused and equal."""
    torch.manual_seed(0)
    attn = Attention(32, heads=2, dim_head=16, norm_num_groups=8, residual_connection=True, bias=True,
                     upcast_softmax=True, _from_deprecated_attn_block=True).eval()
    _randomize_(attn)
    x = torch.randn(2, 32, 4, 4)
    enc = torch.randn(2, 5, 32)
    mask = torch.zeros(2, 1, 16)
    mask[:, :, :3] = -1e4
    with torch.no_grad():
        ref_plain, ref_mask, ref_cross = attn(x), attn(x, attention_mask=mask), attn(x, encoder_hidden_states=enc)
        assert fastdiff.patch(attn) == 1
        scale = ref_plain.abs().max().item()
        torch.testing.assert_close(attn(x), ref_plain, rtol=0, atol=1e-5 * scale)
        assert torch.equal(attn(x, attention_mask=mask), ref_mask)
        torch.testing.assert_close(attn(x, encoder_hidden_states=enc), ref_cross, rtol=0,
                                   atol=1e-5 * ref_cross.abs().max().item())
        assert fastdiff.unpatch(attn) == 1
        assert type(attn.processor) is AttnProcessor2_0


@pytest.mark.parametrize("scale_shift", [False, True], ids=["default", "scale_shift"])
def test_diffusers_unet2d_gradients(scale_shift):
    model = _unet(scale_shift)
    model.train()  # dropout is 0: train mode only exercises the training branches (contiguous() before shortcut)
    patched = copy.deepcopy(model)
    assert fastdiff.patch(patched) > 0
    x, t = _inputs(2)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    (model(x1, t).sample * w).sum().backward()
    (patched(x2, t).sample * w).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=0, atol=1e-5 * x1.grad.abs().max().item())
    params = dict(model.named_parameters())
    # Some gradients are 0 up to rounding (e.g. the key bias of softmax attention): judge those on the global scale.
    floor = 1e-6 * max(p.grad.abs().max().item() for p in params.values())
    for name, p in patched.named_parameters():
        ref = params[name].grad
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, ref, rtol=0, atol=2e-5 * ref.abs().max().item() + floor,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_unpatch_restores_exactly():
    model = _unet(True)
    x, t = _inputs()
    before = _forwards(model)
    procs_before = _processors(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(x, t).sample
    assert fastdiff.patch(model) > 0
    assert _forwards(model) != before
    assert list(model.state_dict()) == list(state)  # patching never changes keys
    procs = _processors(model)
    restored = fastdiff.unpatch(model)
    assert restored == _restored(model)
    assert all(_processors(model)[k] is not p for k, p in procs.items())
    after = _forwards(model)
    assert after.keys() == before.keys()
    for name, (m, fwd) in before.items():
        assert after[name][0] is m, name
        assert after[name][1] is fwd, name
        assert not fastdiff.is_patched(m)
        assert "_fastdiff_patch_saved_forward" not in m.__dict__
    assert type(model.conv_act).forward is nn.SiLU.forward and "forward" not in model.conv_act.__dict__
    assert all(_processors(model)[k] is p for k, p in procs_before.items())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with torch.no_grad():
        out = model(x, t).sample
    assert torch.equal(out, ref)
    assert fastdiff.unpatch(model) == 0


def test_patch_is_idempotent():
    model = _unet(True)
    x, t = _inputs()
    n = fastdiff.patch(model)
    with torch.no_grad():
        once = model(x, t).sample
    assert fastdiff.patch(model) == 0
    with torch.no_grad():
        twice = model(x, t).sample
    assert torch.equal(once, twice)
    assert fastdiff.unpatch(model) == _restored(model)
    assert not any(fastdiff.is_patched(m) for m in model.modules())
    assert fastdiff.patch(model) == n  # patchable again after unpatch


def test_patched_with_reference_backend():
    model = _unet(True)
    x, t = _inputs()
    with torch.no_grad():
        ref = model(x, t).sample
        fastdiff.patch(model)
        with ops.use_backend("reference"):
            out_ref_backend = model(x, t).sample
        out_auto = model(x, t).sample
    scale = ref.abs().max().item()
    torch.testing.assert_close(out_ref_backend, ref, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(out_auto, out_ref_backend, rtol=0, atol=1e-5 * scale)


def test_non_silu_nonlinearity():
    """A block whose nonlinearity is not SiLU gets act "none" + its own nonlinearity (UNet2DModel's head is SiLU
    whatever act_fn is, so it is still fused)."""
    model = _unet(True, nonlinearity="mish")
    x, t = _inputs()
    with torch.no_grad():
        ref = model(x, t).sample
    assert isinstance(model.down_blocks[0].resnets[0].nonlinearity, nn.Mish)
    assert fastdiff.patch(model) == _sites(model)
    with torch.no_grad():
        out = model(x, t).sample
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * ref.abs().max().item())
    fastdiff.unpatch(model)
    with torch.no_grad():
        assert torch.equal(model(x, t).sample, ref)


def test_nothing_to_patch_returns_zero():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 3, 1))
    assert fastdiff.patch(model) == 0
    assert fastdiff.unpatch(model) == 0
    plain_norm = nn.Sequential(nn.GroupNorm(2, 8, affine=False), nn.SiLU())
    assert fastdiff.patch(plain_norm) == 0


def test_fastdiff_models_are_a_noop():
    from fastdiff.models import UNetModel

    model = UNetModel(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                      attention_resolutions=(2,), channel_mult=(1, 2), num_heads=2,
                      use_scale_shift_norm=True).eval()
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([1, 700])
    before = _forwards(model)
    with torch.no_grad():
        ref = model(x, t)
        assert fastdiff.patch(model) == 0
        assert torch.equal(model(x, t), ref)
    assert fastdiff.unpatch(model) == 0
    assert _forwards(model) == before


class GroupNorm32(nn.GroupNorm):
    """guided-diffusion's GroupNorm32, verbatim in behaviour: GroupNorm in fp32, cast back."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class _GDResBlock(nn.Module):
    """A guided-diffusion-style residual block: normalization → SiLU → conv, twice, with scale-shift norm."""

    def __init__(self, ch: int, emb: int):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, 2 * ch))
        self.out_layers = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x, emb):
        h = self.in_layers(x)
        scale, shift = torch.chunk(self.emb_layers(emb)[..., None, None], 2, dim=1)
        out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
        h = out_rest(out_norm(h) * (1 + scale) + shift)
        return x + h


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_guided_diffusion_groupnorm32(dtype):
    block = _randomize_(_GDResBlock(64, 16))
    if dtype == torch.float16:  # guided-diffusion's convert_to_fp16: convs and linears only, norms stay fp32
        for m in block.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.half()
    x = torch.randn(2, 64, 8, 8).to(dtype)
    emb = torch.randn(2, 16).to(dtype)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = block(x1, emb)
    ref.float().square().sum().backward()
    before = _forwards(block)
    assert fastdiff.patch(block) == 2
    out = block(x2, emb)
    out.float().square().sum().backward()
    assert out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out.float(), ref.float(), rtol=0, atol=tol * ref.float().abs().max().item())
    torch.testing.assert_close(x2.grad.float(), x1.grad.float(), rtol=0,
                               atol=tol * x1.grad.float().abs().max().item())
    assert fastdiff.unpatch(block) == 2
    assert _forwards(block) == before
    with torch.no_grad():
        assert torch.equal(block(x, emb), ref.detach())


def test_patch_rejects_non_modules():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fastdiff.patch("not a model")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fastdiff.unpatch(42)


def test_deepcopy_of_patched_model():
    """A deep copy of a patched model is patched itself (its forwards bound to the copy) and unpatches on its own."""
    model = _unet(False)
    x, t = _inputs()
    with torch.no_grad():
        ref = model(x, t).sample
    fastdiff.patch(model)
    clone = copy.deepcopy(model)
    blocks = [m for m in clone.modules() if isinstance(m, ResnetBlock2D)]
    assert blocks and all(fastdiff.is_patched(m) and m.forward.__self__ is m for m in blocks)
    with torch.no_grad():
        torch.testing.assert_close(clone(x, t).sample, ref, rtol=0, atol=1e-5 * ref.abs().max().item())
        assert fastdiff.unpatch(clone) == _restored(clone)
        assert torch.equal(clone(x, t).sample, ref)
    assert all(fastdiff.is_patched(m) for m in model.modules() if isinstance(m, ResnetBlock2D))


def test_copied_resnet_forward_matches_the_installed_diffusers():
    """The patched ResnetBlock2D.forward is a marked copy of diffusers' (RESNET_FORWARD_ORIGIN); the installed
    diffusers, pinned to the tested range, still has exactly that upstream source."""
    import hashlib
    import inspect

    from fastdiff.adapters.patch import RESNET_FORWARD_ORIGIN

    package, version, digest = RESNET_FORWARD_ORIGIN
    source = inspect.getsource(ResnetBlock2D.forward)
    assert hashlib.sha256(source.encode()).hexdigest() == digest, (
        f"diffusers {diffusers.__version__} changed ResnetBlock2D.forward since {package} {version}: re-sync "
        f"fastdiff.adapters.patch._resnet_block_2d_forward and RESNET_FORWARD_ORIGIN")
