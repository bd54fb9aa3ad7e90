"""Likelihood helpers of the variational bound (DDPM eq. 5; Improved DDPM eqs. 4-6), guided-diffusion's values."""
from __future__ import annotations

import math

import torch


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every non-batch dimension: [N, ...] -> [N]."""
    return tensor.mean(dim=list(range(1, tensor.dim())))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise in nats; arguments broadcast, one must be a tensor."""
    like = next((a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, torch.Tensor)), None)
    if like is None:
        raise TypeError("normal_kl needs at least one torch.Tensor among mean1, logvar1, mean2, logvar2")
    logvar1, logvar2 = (a if isinstance(a, torch.Tensor) else torch.tensor(a).to(like) for a in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + ((mean1 - mean2) ** 2) * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715 x³))) (the tanh approximation Ho et al.'s decoder uses)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, *, means: torch.Tensor,
                                        log_scales: torch.Tensor) -> torch.Tensor:
    """log p(x) of the discretised Gaussian decoder L_0 (DDPM eq. 13): mass of N(means, e^{2 log_scales}) on the
    bin [x − 1/255, x + 1/255], the edge bins extended to ±∞.

    x: [N, ...] uint8 images rescaled to [-1, 1]; means, log_scales: x's shape. Returns log-probs in nats, x's shape.
    """
    if not x.shape == means.shape == log_scales.shape:
        raise ValueError(f"x, means and log_scales must have one shape, got {tuple(x.shape)}, "
                         f"{tuple(means.shape)}, {tuple(log_scales.shape)}")
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))
