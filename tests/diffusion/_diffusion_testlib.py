"""Shared helpers for tests/diffusion: tiny models and closed-form float64 schedule math written independently."""
from __future__ import annotations

import math

import numpy as np
import torch

from fastdiff.diffusion import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    get_named_beta_schedule,
)

LEARNED = (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)


def closed_form(betas):
    """ᾱ, ᾱ_prev, β̃ and the posterior coefficients of DDPM eqs. 4-7 from β, float64."""
    b = np.asarray(betas, dtype=np.float64)
    ab = np.array([math.prod(1.0 - b[: i + 1]) for i in range(len(b))])
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    return {
        "b": b, "ab": ab, "ab_prev": ab_prev,
        "post_var": b * (1 - ab_prev) / (1 - ab),
        "coef_x0": np.sqrt(ab_prev) * b / (1 - ab),
        "coef_xt": np.sqrt(1 - b) * (1 - ab_prev) / (1 - ab),
    }


def col(arr, t, ndim):
    """arr[t] as a float64 tensor shaped [N, 1, ...]."""
    return torch.as_tensor(np.asarray(arr)[t.numpy()], dtype=torch.float64).reshape(-1, *([1] * (ndim - 1)))


class TinyModel(torch.nn.Module):
    """x: [N, C, H, W], t -> [N, out_channels, H, W]; depends on x, t and its parameters (records the t it sees).
    Its output is non-contiguous (einsum strides), so loops see strided samples as with channels-last models."""

    def __init__(self, channels=3, out_channels=3, num_timesteps=1000):
        super().__init__()
        # a 1x1 convolution as einsum: torch.conv2d costs ~20 ms per call on tiny CPU inputs here
        self.weight = torch.nn.Parameter(torch.randn(out_channels, channels) / channels ** 0.5)
        self.bias = torch.nn.Parameter(0.1 * torch.randn(out_channels))
        self.num_timesteps = num_timesteps
        self.seen_t = []

    def forward(self, x, t, y=None):
        self.seen_t.append(t.clone())
        h = torch.tanh(torch.einsum("oc,nc...->no...", self.weight, x) + self.bias.view(1, -1, 1, 1)) * (1.0 + t.float().view(-1, 1, 1, 1) / self.num_timesteps)
        if y is not None:
            h = h + y.view(-1, 1, 1, 1)
        return h


def make_diffusion(mean_type=ModelMeanType.EPSILON, var_type=ModelVarType.FIXED_SMALL, loss_type=LossType.MSE,
                   T=40, schedule="cosine", rescale_timesteps=False):
    return GaussianDiffusion(betas=get_named_beta_schedule(schedule, T), model_mean_type=mean_type,
                             model_var_type=var_type, loss_type=loss_type, rescale_timesteps=rescale_timesteps)


def model_for(diffusion, channels=3):
    out = 2 * channels if diffusion.model_var_type in LEARNED else channels
    return TinyModel(channels, out, diffusion.num_timesteps)


def images(n=3, c=3, h=5, w=4):
    """Random images quantised to the 256 levels of uint8 data rescaled to [-1, 1]."""
    return torch.randint(0, 256, (n, c, h, w)).float() / 127.5 - 1.0
