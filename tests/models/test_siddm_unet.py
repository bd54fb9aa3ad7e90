"""SIDDM / DDGAN image networks (fastdiff.models.siddm_unet): shapes for every few-step T, which parameters each head
depends on, the latent z, class conditioning, the UNetModel extra_emb hook, and argument errors."""
from __future__ import annotations

import pytest
import torch

from fastdiff.models import UNetModel
from fastdiff.models.siddm_unet import UNetDDGANDiscriminator, UNetGenerator, UNetSIDDMDiscriminator
from tests.models.conftest import randomize_

pytestmark = pytest.mark.usefixtures("one_thread")

KW = {"in_channels": 3, "model_channels": 32, "num_res_blocks": 1, "attention_resolutions": (2,),
      "channel_mult": (1, 2), "num_head_channels": 32, "use_scale_shift_norm": True, "resblock_updown": True}


def _kw(size=8, **extra):
    return {**KW, "image_size": size, **extra}


def _ddgan_kw(size=8, **extra):
    kw = _kw(size, **extra)
    kw.pop("in_channels")
    return kw


def _inputs(n=4, size=8, T=4, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**31, ())))
    x = torch.randn(n, 3, size, size, generator=g)
    t = torch.randint(0, T, (n,), generator=g)
    z = torch.randn(n, 100, generator=g)
    return x, t, z


def _grads(model, out: torch.Tensor) -> dict:
    """{parameter name: |grad| sum or None} after backpropagating out.sum()."""
    model.zero_grad(set_to_none=True)
    out.float().pow(2).sum().backward()
    return {n: (None if p.grad is None else float(p.grad.abs().sum())) for n, p in model.named_parameters()}


def _part(grads: dict, prefixes) -> list:
    return [v for n, v in grads.items() if n.startswith(tuple(prefixes))]


DECODER = ("output_blocks.", "out.")
ENCODER = ("time_embed.", "input_blocks.", "middle_block.")


# ---------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [8, 16])
@pytest.mark.parametrize("T", [1, 2, 4, 8])
def test_shapes_every_T(size, T):
    x, t, z = _inputs(n=3, size=size, T=T)
    assert int(t.max()) < T and t.dtype == torch.int64
    G = randomize_(UNetGenerator(**_kw(size)))
    D = randomize_(UNetSIDDMDiscriminator(**_kw(size)))
    DD = randomize_(UNetDDGANDiscriminator(in_channels=3, **_ddgan_kw(size)))
    x0 = G(x, t, z)
    assert x0.shape == x.shape and x0.dtype == torch.float32 and torch.isfinite(x0).all()
    logit, afd, den = D(x, t)
    assert logit.shape == (3,) and afd.shape == x.shape and den.shape == x.shape
    assert all(torch.isfinite(v).all() for v in (logit, afd, den))
    jl = DD(x, t, torch.randn_like(x))
    assert jl.shape == (3,) and torch.isfinite(jl).all()


def test_fresh_heads_start_at_zero():
    """ADM's zero-initialised output layers: an untrained discriminator says logit 0, afd 0, x̂_0 0."""
    x, t, _ = _inputs()
    logit, afd, den = UNetSIDDMDiscriminator(**_kw())(x, t)
    assert logit.abs().max() == 0 and afd.abs().max() == 0 and den.abs().max() == 0
    assert UNetDDGANDiscriminator(in_channels=3, **_ddgan_kw())(x, t, x).abs().max() == 0


def test_time_conditioning_changes_every_output():
    x, _, z = _inputs(n=2)
    t0, t1 = torch.zeros(2, dtype=torch.int64), torch.full((2,), 3)
    G, D = randomize_(UNetGenerator(**_kw())), randomize_(UNetSIDDMDiscriminator(**_kw()))
    DD = randomize_(UNetDDGANDiscriminator(in_channels=3, **_ddgan_kw()))
    with torch.no_grad():
        assert not torch.allclose(G(x, t0, z), G(x, t1, z))
        for a, b in zip(D(x, t0), D(x, t1)):
            assert not torch.allclose(a, b)
        assert not torch.allclose(DD(x, t0, x), DD(x, t1, x))


# ---------------------------------------------------------------------------------------------------- gradient flow


def test_siddm_discriminator_heads_use_the_right_parameters():
    D = randomize_(UNetSIDDMDiscriminator(**_kw()))
    x, t, _ = _inputs()
    names = dict(D.named_parameters())
    # logit: encoder + logit head only
    g = _grads(D, D(x, t)[0])
    assert all(v is None for v in _part(g, DECODER + ("afd_head.",)))
    assert all(v is not None and v > 0 for v in _part(g, ENCODER + ("logit_head.",)))
    # AFD regression C_ψ: encoder + afd head only (shares the trunk with the logit)
    g = _grads(D, D(x, t)[1])
    assert all(v is None for v in _part(g, DECODER + ("logit_head.",)))
    assert all(v is not None and v > 0 for v in _part(g, ENCODER + ("afd_head.",)))
    # denoising output: the decoder, through the encoder too
    g = _grads(D, D(x, t)[2])
    assert all(v is None for v in _part(g, ("logit_head.", "afd_head.")))
    assert all(v is not None and v > 0 for v in _part(g, DECODER))
    assert g["input_blocks.0.0.weight"] > 0 and g["middle_block.0.in_layers.2.weight"] > 0
    assert set(names) == set(g)


def test_siddm_discriminator_decoder_change_moves_only_denoised():
    D = randomize_(UNetSIDDMDiscriminator(**_kw())).eval()
    x, t, _ = _inputs()
    with torch.no_grad():
        logit, afd, den = D(x, t)
        for n, p in D.named_parameters():
            if n.startswith(DECODER):
                p.add_(0.1 * torch.randn_like(p))
        logit2, afd2, den2 = D(x, t)
        logit3, afd3, none = D(x, t, denoise=False)
    torch.testing.assert_close(logit2, logit)
    torch.testing.assert_close(afd2, afd)
    assert (den2 - den).abs().max() > 1e-3
    assert none is None
    torch.testing.assert_close(logit3, logit2)
    torch.testing.assert_close(afd3, afd2)


def test_siddm_discriminator_gradient_reaches_its_input():
    """The generator learns through D's input gradient: logit and afd_pred are differentiable in x_{t−1}."""
    D = randomize_(UNetSIDDMDiscriminator(**_kw()))
    x, t, _ = _inputs()
    x.requires_grad_(True)
    logit, afd, _ = D(x, t, denoise=False)
    (gl,) = torch.autograd.grad(logit.sum(), x, retain_graph=True)
    (ga,) = torch.autograd.grad(afd.pow(2).sum(), x)
    assert gl.abs().sum() > 0 and ga.abs().sum() > 0


def test_ddgan_discriminator_reads_both_inputs():
    DD = randomize_(UNetDDGANDiscriminator(in_channels=3, **_ddgan_kw()))
    x, t, _ = _inputs()
    xt = torch.randn_like(x).requires_grad_(True)
    x.requires_grad_(True)
    gp, gt = torch.autograd.grad(DD(x, t, xt).sum(), (x, xt))
    assert gp.abs().sum() > 0 and gt.abs().sum() > 0
    assert DD.in_channels == 6 and DD.data_channels == 3


def test_ddgan_r1_double_backward_with_the_reference_backend():
    """DDGAN's R1 penalty (a gradient of the input gradient) reaches the discriminator's parameters."""
    from fastdiff import ops

    DD = randomize_(UNetDDGANDiscriminator(in_channels=3, **_ddgan_kw()))
    x, t, _ = _inputs()
    x.requires_grad_(True)
    with ops.use_backend("reference"):
        (g,) = torch.autograd.grad(DD(x, t, torch.randn_like(x)).sum(), x, create_graph=True)
        g.square().sum().backward()
    assert DD.input_blocks[0][0].weight.grad.abs().sum() > 0
    assert DD.middle_block[1].qkv.weight.grad.abs().sum() > 0


def test_ddgan_objective_r1_runs_on_the_default_backend():
    """DDGANObjective's R1 pass switches to the reference backend itself: the default (auto) backend, whose CPU
    attention has no double backward, trains the ADM discriminator with r1_gamma > 0."""
    from fastdiff.training.adversarial import AdversarialPair, DDGANObjective, few_step_diffusion

    DD = randomize_(UNetDDGANDiscriminator(in_channels=3, **_ddgan_kw()))
    G = UNetGenerator(nz=100, **_kw())
    objective = DDGANObjective(few_step_diffusion(4), nz=100, r1_gamma=0.5)
    x, _, _ = _inputs()
    draw = objective.draw(4, tuple(x.shape[1:]), torch.Generator().manual_seed(0))
    loss, terms, _ = objective.losses(AdversarialPair(G, DD), x, None, draw, "discriminator")
    loss.backward()
    assert float(terms["r1"]) > 0
    assert DD.middle_block[1].qkv.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------- generator


def test_generator_z_changes_output_and_reaches_mapping_network():
    G = randomize_(UNetGenerator(**_kw()))
    x, t, z = _inputs()
    with torch.no_grad():
        a, b, a2 = G(x, t, z), G(x, t, torch.randn_like(z)), G(x, t, z.clone())
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(a, a2)
    g = _grads(G, G(x, t, z))
    assert all(v is not None and v > 0 for v in _part(g, ("z_embed.",)))
    # different z per row: the outputs differ row by row (modes of p_θ(x_{t−1}|x_t) from one x_t)
    with torch.no_grad():
        xs = x[:1].expand(4, -1, -1, -1)
        out = G(xs, t[:1].expand(4), torch.randn(4, 100))
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_generator_is_the_unet_plus_a_style_embedding():
    """With the mapping network's output zeroed, G is exactly the UNetModel its state dict (minus z_embed) loads."""
    G = randomize_(UNetGenerator(**_kw(), nz=16, z_layers=2))
    with torch.no_grad():
        G.z_embed[-1].weight.zero_()
        G.z_embed[-1].bias.zero_()
    unet = UNetModel(**_kw(), out_channels=3)
    unet.load_state_dict(G.unet_state_dict(), strict=True)
    x, t, _ = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(G(x, t, torch.randn(4, 16)), unet(x, t))
        torch.testing.assert_close(unet(x, t, extra_emb=torch.zeros(4, 128)), unet(x, t))
        assert (unet(x, t, extra_emb=torch.randn(4, 128)) - unet(x, t)).abs().max() > 1e-3
    assert sum(isinstance(m, torch.nn.Linear) for m in G.z_embed) == 3   # nz->E, E->E, last E->E


def test_class_conditional_networks():
    kw = _kw(num_classes=10)
    G, D = randomize_(UNetGenerator(**kw)), randomize_(UNetSIDDMDiscriminator(**kw))
    DD = randomize_(UNetDDGANDiscriminator(in_channels=3, **_ddgan_kw(), num_classes=10))
    x, t, z = _inputs()
    y0, y1 = torch.zeros(4, dtype=torch.int64), torch.full((4,), 7)
    with torch.no_grad():
        assert (G(x, t, z, y0) - G(x, t, z, y1)).abs().max() > 1e-3
        assert (D(x, t, y0)[0] - D(x, t, y1)[0]).abs().max() > 1e-4
        assert (DD(x, t, x, y0) - DD(x, t, x, y1)).abs().max() > 1e-4
    for call in (lambda: G(x, t, z), lambda: D(x, t), lambda: DD(x, t, x)):
        with pytest.raises(ValueError, match="class-conditional"):
            call()


# ---------------------------------------------------------------------------------------------------- errors


def test_bad_arguments_name_the_argument():
    G, D = UNetGenerator(**_kw()), UNetSIDDMDiscriminator(**_kw())
    DD = UNetDDGANDiscriminator(in_channels=3, **_ddgan_kw())
    x, t, z = _inputs()
    with pytest.raises(ValueError, match=r"z must be a tensor of shape \[N, nz\] = \[4, 100\]"):
        G(x, t, z[:, :10])
    with pytest.raises(ValueError, match="z must be"):
        G(x, t, None)
    with pytest.raises(ValueError, match=r"x_t must have shape \[N, 3, H, W\]"):
        G(x[:, :1], t, z)
    with pytest.raises(ValueError, match="timesteps must have shape"):
        G(x, t[:2], z)
    with pytest.raises(ValueError, match=r"x_prev must have shape"):
        D(x[0], t)
    with pytest.raises(ValueError, match="divisible by 2"):
        D(torch.randn(4, 3, 9, 9), t)
    with pytest.raises(TypeError, match="x_prev must be floating point"):
        D(x.long(), t)
    with pytest.raises(ValueError, match="x_t and x_prev must have the same shape"):
        DD(x, t, torch.randn(4, 3, 16, 16))
    with pytest.raises(ValueError, match=r"x_t must have shape \[N, 3"):
        DD(x, t, x[:, :2])
    with pytest.raises(ValueError, match="class-conditional"):
        D(x, t, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="extra_emb must have shape"):
        UNetModel(**_kw(), out_channels=3)(x, t, extra_emb=torch.zeros(4, 7))


@pytest.mark.parametrize("make, match", [
    (lambda: UNetGenerator(**_kw(), nz=0), "nz must be a positive int"),
    (lambda: UNetGenerator(**_kw(), z_layers=-1), "z_layers must be an int >= 0"),
    (lambda: UNetGenerator(**_kw(), out_channels=6), "out_channels must equal in_channels"),
    (lambda: UNetSIDDMDiscriminator(**_kw(), out_channels=6), "out_channels must equal in_channels"),
    (lambda: UNetSIDDMDiscriminator(**_kw(), dims=1), "dims must be 2"),
    (lambda: UNetDDGANDiscriminator(in_channels=3, **_ddgan_kw(), pool="attention"), "pool is fixed"),
    (lambda: UNetDDGANDiscriminator(in_channels=3, **_ddgan_kw(), out_channels=2), "out_channels is fixed"),
    (lambda: UNetDDGANDiscriminator(in_channels=0, **_ddgan_kw()), "in_channels must be a positive int"),
    (lambda: UNetDDGANDiscriminator(in_channels=3, **_ddgan_kw(), num_classes=0), "num_classes must be"),
])
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
