import math

import pytest
import torch

from fastdiff.diffusion import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)


def test_normal_kl_matches_torch_distributions():
    m1, m2 = torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(4, 3, 5, dtype=torch.float64)
    lv1, lv2 = torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(4, 3, 5, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                                 torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-10, atol=1e-12)


def test_normal_kl_broadcasts_scalars():
    m1, lv1 = torch.randn(6), torch.randn(6)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                                 torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(normal_kl(m1, lv1, 0.0, 0.0), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="torch.Tensor"):
        normal_kl(0.0, 0.0, 1.0, 0.0)


def test_approx_cdf_close_to_exact():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    assert (approx_standard_normal_cdf(x) - torch.special.ndtr(x)).abs().max() < 2e-4


def _bin_mass(lo, hi, mean, std, n=2001):
    """∫_lo^hi N(u; mean, std²) du by the trapezoid rule (lo/hi may be ±∞: cut at mean ± 12 std)."""
    lo = torch.maximum(lo, mean - 12 * std)
    hi = torch.minimum(hi, mean + 12 * std)
    u = lo.unsqueeze(-1) + (hi - lo).clamp_min(0).unsqueeze(-1) * torch.linspace(0, 1, n, dtype=torch.float64)
    pdf = torch.exp(-0.5 * ((u - mean.unsqueeze(-1)) / std.unsqueeze(-1)) ** 2) / (std.unsqueeze(-1) * math.sqrt(2 * math.pi))
    return torch.trapezoid(pdf, u, dim=-1)


def test_discretized_gaussian_log_likelihood_vs_numeric_integration():
    x = torch.randint(0, 256, (2, 3, 7)).double() / 127.5 - 1.0
    x[0, 0, 0], x[0, 0, 1] = -1.0, 1.0  # both edge bins
    means = x + 0.05 * torch.randn_like(x)
    log_scales = torch.empty_like(x).uniform_(-5.0, -2.0)
    logp = discretized_gaussian_log_likelihood(x, means=means, log_scales=log_scales)
    assert logp.shape == x.shape and (logp <= 0).all()
    lo = torch.where(x < -0.999, torch.full_like(x, -math.inf), x - 1 / 255)
    hi = torch.where(x > 0.999, torch.full_like(x, math.inf), x + 1 / 255)
    mass = _bin_mass(lo, hi, means, log_scales.exp())
    # the tanh CDF approximation is within 2e-4 of Φ, so each bin mass within 4e-4
    assert (logp.exp() - mass).abs().max() < 4e-4


def test_discretized_gaussian_shape_error():
    with pytest.raises(ValueError, match="one shape"):
        discretized_gaussian_log_likelihood(torch.zeros(2, 3), means=torch.zeros(2, 3), log_scales=torch.zeros(3))


def test_mean_flat():
    x = torch.randn(4, 3, 2, 5)
    torch.testing.assert_close(mean_flat(x), x.reshape(4, -1).mean(1))
