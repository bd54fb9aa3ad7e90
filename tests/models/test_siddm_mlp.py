"""The MLP SIDDM / DDGAN nets (fastdiff.models.siddm): Fourier features, step and label embeddings, shapes, the
state dict carrying the fixed frequencies, and bad inputs named."""
from __future__ import annotations

import math

import pytest
import torch

from fastdiff.models.siddm import FourierFeatures, MLPDDGANDiscriminator, MLPGenerator, MLPSIDDMDiscriminator


def test_fourier_features():
    v = torch.randn(7, 2)
    off = FourierFeatures(2, 0.0)
    assert off.out_dim == 2 and off(v) is v
    ff = FourierFeatures(2, 0.3, num_frequencies=5)
    out = ff(v)
    assert ff.out_dim == 12 and out.shape == (7, 12)
    torch.testing.assert_close(out[:, :2], v)
    torch.testing.assert_close(out[:, 2:7] ** 2 + out[:, 7:] ** 2, torch.ones(7, 5))
    torch.testing.assert_close(out[:, 2:7], torch.sin(2 * math.pi * v @ ff.B))
    assert ff.B.std() < 1.0  # σ = 0.3 scales the N(0, 1) draw


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_shapes_and_state_dict_round_trip(sigma):
    n, nz, T = 6, 3, 4
    x, x2, z = torch.randn(n, 2), torch.randn(n, 2), torch.randn(n, nz)
    t, y = torch.arange(n) % T, torch.arange(n) % 5
    torch.manual_seed(0)
    nets = [MLPGenerator(2, nz=nz, width=16, depth=2, num_steps=T, num_classes=5, fourier_sigma=sigma),
            MLPSIDDMDiscriminator(2, width=16, depth=2, num_steps=T, num_classes=5, fourier_sigma=sigma),
            MLPDDGANDiscriminator(2, width=16, depth=2, num_steps=T, num_classes=5, fourier_sigma=sigma)]
    calls = [lambda m: m(x, t, z, y), lambda m: m(x, t, y), lambda m: m(x, t, x2, y)]
    outs = [call(net) for net, call in zip(nets, calls)]
    assert outs[0].shape == (n, 2)
    assert [o.shape for o in outs[1]] == [(n,), (n, 2), (n, 2)]
    assert outs[2].shape == (n,)
    torch.manual_seed(1)  # different weights and frequencies, then the saved state restores both
    twins = [MLPGenerator(2, nz=nz, width=16, depth=2, num_steps=T, num_classes=5, fourier_sigma=sigma),
             MLPSIDDMDiscriminator(2, width=16, depth=2, num_steps=T, num_classes=5, fourier_sigma=sigma),
             MLPDDGANDiscriminator(2, width=16, depth=2, num_steps=T, num_classes=5, fourier_sigma=sigma)]
    assert [net.in_dim for net in nets] == [2 + nz, 2, 4]  # G: z joins x_t in the Fourier features
    for net, twin, call, out in zip(nets, twins, calls, outs):
        assert ("fourier.B" in twin.state_dict()) and twin.fourier.B.shape == (net.in_dim, 64 if sigma else 0)
        twin.load_state_dict(net.state_dict())
        torch.testing.assert_close(call(twin), out)


def test_step_and_label_change_the_output():
    torch.manual_seed(0)
    g = MLPGenerator(2, nz=2, width=16, depth=2, num_steps=4, num_classes=3)
    x, z = torch.randn(3, 2), torch.randn(3, 2)
    zeros, ones = torch.zeros(3, dtype=torch.int64), torch.ones(3, dtype=torch.int64)
    assert not torch.allclose(g(x, zeros, z, zeros), g(x, ones, z, zeros))
    assert not torch.allclose(g(x, zeros, z, zeros), g(x, zeros, z, ones))


def test_bad_inputs_are_named():
    g = MLPGenerator(2, nz=2, width=8, depth=1, num_steps=4)
    x, z, t = torch.randn(3, 2), torch.randn(3, 2), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="timesteps must lie in"):
        g(x, torch.full((3,), 4), z)
    with pytest.raises(ValueError, match="timesteps must be int64"):
        g(x, t.float(), z)
    with pytest.raises(ValueError, match="z must be"):
        g(x, t, torch.randn(3, 3))
    with pytest.raises(ValueError, match="x_t must be"):
        g(torch.randn(3, 3), t, z)
    with pytest.raises(ValueError, match="unconditional"):
        g(x, t, z, t)
    with pytest.raises(ValueError, match="y .* required"):
        MLPSIDDMDiscriminator(2, width=8, depth=1, num_classes=3)(x, t)
    for kw, name in [({"fourier_sigma": -1.0}, "fourier_sigma"), ({"fourier_sigma": float("nan")}, "fourier_sigma"),
                     ({"width": 0}, "width"), ({"depth": 0}, "depth"), ({"num_steps": 0}, "num_steps"),
                     ({"num_classes": 0}, "num_classes"), ({"fourier_sigma": 1.0, "num_frequencies": 0},
                                                           "num_frequencies")]:
        with pytest.raises(ValueError, match=name):
            MLPSIDDMDiscriminator(2, **kw)
    with pytest.raises(ValueError, match="nz"):
        MLPGenerator(2, nz=0)
