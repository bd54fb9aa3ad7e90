"""fastdiff.data.toy: mixture constructors, sampling statistics and the exact ε-predictor."""
import math

import numpy as np
import pytest
import torch

from fastdiff.data import GaussianMixture, grid25, ring8

AC = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))  # DDPM's linear schedule


def _rng():
    """A freshly seeded generator (fresh inputs every run); the seed is in the repr for failures."""
    seed = int(torch.randint(0, 2**31, (1,)).item())
    return torch.Generator().manual_seed(seed), seed


def _random_mixture(g, k=4, d=2, std_range=(0.3, 0.6)):
    """A random mixture with well-separated-ish means in [-2, 2]^d, per-component std and random weights."""
    means = torch.rand(k, d, generator=g, dtype=torch.float64) * 4 - 2
    std = std_range[0] + (std_range[1] - std_range[0]) * torch.rand(k, generator=g, dtype=torch.float64)
    weights = 0.2 + torch.rand(k, generator=g, dtype=torch.float64)
    return GaussianMixture(means, std, weights)


def _quadrature_posterior_mean(mix, x, ab, half_width=6.0, m=601):
    """E[x0 | x_t = x] by brute-force quadrature over a 2-D grid of x0 (independent of the closed form)."""
    u = torch.linspace(-half_width, half_width, m, dtype=torch.float64)
    g0, g1 = torch.meshgrid(u, u, indexing="ij")
    x0 = torch.stack([g0.reshape(-1), g1.reshape(-1)], 1)                       # [M, 2]
    log_prior = mix.log_prob(x0)                                                # [M]
    d2 = torch.cdist(x.to(torch.float64), math.sqrt(ab) * x0).square()           # [N, M]
    log_w = log_prior[None] - 0.5 * d2 / (1 - ab)
    w = torch.softmax(log_w, 1)
    return w @ x0


def _log_marginal(mix, x, ab):
    """log p_t(x) = log Σ_k w_k N(x; √ᾱ μ_k, (ᾱ s_k² + 1 − ᾱ) I), written out independently for autograd."""
    var = ab * mix.std**2 + 1 - ab                                              # [K]
    d2 = ((x[:, None, :] - math.sqrt(ab) * mix.means[None]) ** 2).sum(-1)       # [N, K]
    logs = mix.weights.log() - 0.5 * mix.dim * torch.log(2 * math.pi * var) - 0.5 * d2 / var
    return logs.logsumexp(1)


def test_grid25_layout():
    m = grid25()
    assert m.n_components == 25 and m.dim == 2
    ticks = torch.unique(m.means[:, 0])
    assert torch.allclose(ticks, torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0], dtype=torch.float64) * 2 / 2.828)
    assert torch.unique(m.means, dim=0).shape[0] == 25
    assert torch.allclose(m.std, torch.full((25,), 0.05 / 2.828, dtype=torch.float64))
    assert torch.allclose(m.weights, torch.full((25,), 1 / 25, dtype=torch.float64))


def test_ring8_layout():
    m = ring8()
    assert m.n_components == 8
    assert torch.allclose(m.means.norm(dim=1), torch.full((8,), 2 / 1.414, dtype=torch.float64))
    ang = torch.atan2(m.means[:, 1], m.means[:, 0]).remainder(2 * math.pi).sort().values
    assert torch.allclose(ang.diff(), torch.full((7,), math.pi / 4, dtype=torch.float64))


@pytest.mark.parametrize("bad", [dict(means=torch.zeros(3)), dict(means=torch.zeros(3, 2), std=-1.0),
                                 dict(means=torch.zeros(3, 2), std=torch.ones(2)),
                                 dict(means=torch.zeros(3, 2), weights=torch.tensor([1.0, -1.0, 1.0]))])
def test_mixture_validation(bad):
    with pytest.raises(ValueError):
        GaussianMixture(**bad)


def test_sample_statistics():
    g, seed = _rng()
    mix = _random_mixture(g, k=5)
    n = 40000
    x, labels = mix.sample(n, generator=g, return_labels=True)
    assert x.shape == (n, 2) and x.dtype == torch.float32 and labels.shape == (n,)
    freq = torch.bincount(labels, minlength=5).double() / n
    sd = (mix.weights * (1 - mix.weights) / n).sqrt()
    assert ((freq - mix.weights).abs() <= 5 * sd).all(), (seed, freq, mix.weights)
    for k in range(5):
        r = x[labels == k].double() - mix.means[k]
        nk = r.shape[0]
        assert (r.mean(0).abs() <= 5 * mix.std[k] / math.sqrt(nk)).all(), (seed, k)
        # per-coordinate variance of N(0, s^2): relative sd sqrt(2 / n)
        assert (r.var(0) / mix.std[k] ** 2 - 1).abs().max() <= 5 * math.sqrt(2 / nk), (seed, k)


def test_sample_reproducible_with_generator():
    m = grid25()
    seed = int(torch.randint(0, 2**31, (1,)).item())
    a = m.sample(100, generator=torch.Generator().manual_seed(seed))
    b = m.sample(100, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)
    assert m.sample(0).shape == (0, 2)


def test_single_gaussian_closed_form():
    g, seed = _rng()
    mu = torch.randn(1, 2, generator=g, dtype=torch.float64)
    s = 0.1 + torch.rand(1, generator=g, dtype=torch.float64).item()
    mix = GaussianMixture(mu, s)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64) * 2
    ab = torch.rand(64, generator=g, dtype=torch.float64) * 0.98 + 0.01
    expect = mu + (ab.sqrt() * s**2 / (ab * s**2 + 1 - ab))[:, None] * (x - ab.sqrt()[:, None] * mu)
    assert torch.allclose(mix.x0_posterior_mean(x, ab), expect, rtol=1e-12, atol=1e-12), seed
    eps = (x - ab.sqrt()[:, None] * expect) / (1 - ab).sqrt()[:, None]
    assert torch.allclose(mix.eps_posterior_mean(x, ab), eps, rtol=1e-10, atol=1e-10), seed


@pytest.mark.parametrize("ab", [0.95, 0.6, 0.2, 0.02])
def test_posterior_mean_matches_quadrature(ab):
    g, seed = _rng()
    mix = _random_mixture(g, k=4)
    x = math.sqrt(ab) * mix.sample(12, generator=g).double() + math.sqrt(1 - ab) * torch.randn(
        12, 2, generator=g, dtype=torch.float64)
    got = mix.x0_posterior_mean(x, ab)
    ref = _quadrature_posterior_mean(mix, x, ab)
    assert torch.allclose(got, ref, atol=1e-6), (seed, (got - ref).abs().max())


@pytest.mark.parametrize("t", [0, 3, 100, 400, 999])
def test_eps_model_is_tweedie_score(t):
    """ε̂(x, t) = −√(1 − ᾱ_t) ∇ log p_t(x) (Tweedie), with the marginal differentiated by autograd."""
    g, seed = _rng()
    mix = _random_mixture(g, k=6, std_range=(0.05, 0.5))
    ab = float(AC[t])
    x = (math.sqrt(ab) * mix.sample(32, generator=g).double()
         + math.sqrt(1 - ab) * torch.randn(32, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    (score,) = torch.autograd.grad(_log_marginal(mix, x, ab).sum(), x)
    expect = -math.sqrt(1 - ab) * score
    got = mix.eps_model(AC)(x.detach(), torch.full((32,), t))
    assert got.dtype == torch.float64
    assert torch.allclose(got, expect, rtol=1e-7, atol=1e-8), (seed, (got - expect).abs().max())


def test_eps_model_float32_mixed_timesteps_rowwise():
    """Per-sample t in one batch gives the same as evaluating each row alone (no cross-row mixing)."""
    g, seed = _rng()
    mix = grid25()
    model = mix.eps_model(torch.as_tensor(AC))
    x = torch.randn(37, 2, generator=g)
    t = torch.randint(0, 1000, (37,), generator=g)
    out = model(x, t)
    assert out.shape == (37, 2) and out.dtype == torch.float32 and torch.isfinite(out).all()
    rows = torch.cat([model(x[i:i + 1], t[i:i + 1]) for i in range(37)])
    assert torch.allclose(out, rows, rtol=1e-6, atol=1e-6), seed
    assert torch.equal(model(x, 500), model(x, torch.full((37,), 500)))
    with pytest.raises(IndexError):
        model(x, torch.full((37,), 1000))


def test_near_t0_posterior_mean_is_the_input():
    """Close to the data (ᾱ → 1) E[x0 | x_t] ≈ x_t: within the shrinkage (1 − gain)·|x − μ| + O(1 − ᾱ)."""
    g, seed = _rng()
    mix = _random_mixture(g, k=4, std_range=(0.3, 0.6))
    x0 = mix.sample(200, generator=g).double()
    for ab, tol in [(float(AC[0]), 2e-3), (1 - 1e-8, 2e-7)]:
        xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(200, 2, generator=g, dtype=torch.float64)
        err = (mix.x0_posterior_mean(xt, ab) - xt).abs().max().item()
        assert err < tol, (seed, ab, err)
    # ...and on the narrow grid at t = 0 it pulls a noisy point towards its own centre, never away.
    grid = grid25()
    x0, lab = grid.sample(500, generator=g, return_labels=True)
    ab = float(AC[0])
    noise = torch.randn(500, 2, generator=g, dtype=torch.float64)
    xt = math.sqrt(ab) * x0.double() + math.sqrt(1 - ab) * noise
    post = grid.x0_posterior_mean(xt, ab)
    c = grid.means[lab]
    assert ((post - c).norm(dim=1) <= (xt - c).norm(dim=1) + 1e-3).all(), seed


def test_last_timestep_is_pure_noise():
    """At t = T−1 (ᾱ ≈ 4e-5) x_t carries almost no information: E[x0|x_t] ≈ E[x0] + √ᾱ Cov[x0] x_t (first order
    in √ᾱ, Tweedie) and ε̂ ≈ x."""
    g, seed = _rng()
    mix = _random_mixture(g, k=5)
    x = torch.randn(256, 2, generator=g).double()
    w, mu = mix.weights, mix.means
    prior_mean = (w[:, None] * mu).sum(0)
    centred = mu - prior_mean
    cov = (w[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0) + (w * mix.std**2).sum() * torch.eye(2)
    ab = float(AC[-1])
    first_order = ab**0.5 * x @ cov.T
    post = mix.x0_posterior_mean(x, ab)
    assert (post - prior_mean - first_order).abs().max() < 0.25 * first_order.abs().max() + 1e-3, seed
    x = x.float()
    eps = mix.eps_model(AC)(x, torch.full((256,), 999))
    # ε̂ − x = (x(1 − √(1−ᾱ)) − √ᾱ E[x0|x]) / √(1−ᾱ): bounded by √ᾱ·max|E[x0|x]| up to O(ᾱ)
    assert (eps - x).abs().max() < ab**0.5 * float(post.abs().max()) * 1.01 + 1e-4, seed
    # far from pure noise, the same point is explained by the data: ε̂ differs from x
    eps_mid = mix.eps_model(AC)(x, torch.full((256,), 100))
    assert (eps_mid - x).abs().max() > 0.5, seed


def test_alpha_bar_validation():
    m = grid25()
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError):
        m.x0_posterior_mean(x, 0.0)
    with pytest.raises(ValueError):
        m.x0_posterior_mean(x, torch.rand(3, dtype=torch.float64))
    with pytest.raises(ValueError):
        m.eps_posterior_mean(x, 1.0)
    with pytest.raises(ValueError):
        m.x0_posterior_mean(torch.randn(4, 3), 0.5)
    with pytest.raises(ValueError):
        m.eps_model(np.array([0.5, 1.0]))
