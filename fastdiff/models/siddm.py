"""MLP networks of the few-step adversarial denoisers (DDGAN, Xiao et al. 2022; SIDDM, Xu et al. 2023) for 2-D data.
They follow the call contract of `fastdiff.training.adversarial`:

- `MLPGenerator`: G_θ(x_t, t, z[, y]) -> x̂_0, the generator of p_θ(x_{t−1} | x_t) = q(x_{t−1} | x_t, x̂_0)
  (DDGAN eq. 8; SIDDM §3.2), the latent z joining x_t in the Fourier features.
- `MLPSIDDMDiscriminator`: one shared trunk on (x_{t−1}, t) with three linear heads: the logit of D_φ(x_{t−1}, t), the
  AFD regression C_ψ(x_{t−1}) ≈ x_t (SIDDM: "the discriminator and the regression model share most layers") and the
  denoising output ≈ x_0 of the discriminator regulariser (SIDDM §3.3).
- `MLPDDGANDiscriminator`: DDGAN's joint D_φ(x_{t−1}, x_t, t) on the concatenated pair.

Every net is `StepMLP`: the data-space input through optional random Fourier features γ(v) = [v, sin 2πvB, cos 2πvB]
with fixed B ~ N(0, σ²) (Tancik et al. 2020), concatenated with a learned embedding of the step index t (and of the
label y), then `depth` × (Linear → LeakyReLU(0.2)), the usual GAN toy MLP. MLPs learn high-frequency functions slowly
(spectral bias); Fourier features let the discriminator see, and the generator draw, modes far narrower than the
data's extent in a few thousand steps (siddm-mog: std 0.5 modes 5 apart; without them D stays at chance and samples
smear over the grid). The generator's latent z goes through the same features as x_t: concatenated after them, z
could only bend the output smoothly while γ(x_t) could place it sharply, so G learned x̂_0 as a near-deterministic
function of x_t, and its samples had the spread of E[x_0 | x_t] alone: modes drawn at 0.6 of the data's width at
T = 2-4 (siddm-mog; README, "Few-step adversarial denoising").
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fastdiff.models.nn import check_labels

_EMB = 16  # size of the step and label embeddings


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


class FourierFeatures(nn.Module):
    """γ(v) = concat(v, sin(2π v B), cos(2π v B)): [N, dim] -> [N, out_dim], B: [dim, num_frequencies] ~ N(0, σ²)
    drawn once from torch's generator and kept as a buffer (in the state dict). σ = 0: the identity (out_dim = dim)."""

    def __init__(self, dim: int, sigma: float = 0.0, num_frequencies: int = 64):
        super().__init__()
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"fourier_sigma must be a finite number >= 0, got {sigma!r}")
        self.sigma = float(sigma)
        n = _check_int("num_frequencies", num_frequencies) if sigma > 0 else 0
        self.register_buffer("B", torch.randn(dim, n) * self.sigma)
        self.out_dim = dim + 2 * n

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.B.shape[1] == 0:
            return v
        p = (2 * math.pi) * (v @ self.B.to(v.dtype))
        return torch.cat([v, p.sin(), p.cos()], dim=1)


class StepMLP(nn.Module):
    """The trunk: (v: [N, in_dim], t: int64 [N] in [0, num_steps)[, y: [N]]) -> h: [N, width].

    h = MLP(concat(γ(v), E_t[t], E_y[y])), `depth` layers of Linear → LeakyReLU(0.2).
    """

    input_name = "input"  # what errors call v

    def __init__(self, in_dim: int, width: int, depth: int, num_steps: int, num_classes: int | None,
                 fourier_sigma: float, num_frequencies: int):
        super().__init__()
        self.in_dim, self.width = in_dim, _check_int("width", width)
        self.num_steps = _check_int("num_steps", num_steps)
        if num_classes is not None:
            _check_int("num_classes", num_classes)
        self.num_classes = num_classes
        self.fourier = FourierFeatures(in_dim, fourier_sigma, num_frequencies)
        self.step_embed = nn.Embedding(num_steps, _EMB)
        self.label_embed = nn.Embedding(num_classes, _EMB) if num_classes else None
        layers, d = [], self.fourier.out_dim + _EMB * (2 if num_classes else 1)
        for _ in range(_check_int("depth", depth)):
            layers += [nn.Linear(d, width), nn.LeakyReLU(0.2)]
            d = width
        self.layers = nn.Sequential(*layers)

    def features(self, v: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if v.dim() != 2 or v.shape[1] != self.in_dim:
            raise ValueError(f"{type(self).__name__}: {self.input_name} must be [N, {self.in_dim}], got "
                             f"{tuple(v.shape)}")
        if tuple(t.shape) != (v.shape[0],) or t.dtype != torch.int64:
            raise ValueError(f"timesteps must be int64 [N] = [{v.shape[0]}], got {t.dtype} {tuple(t.shape)}")
        if t.numel() and not (0 <= int(t.min()) and int(t.max()) < self.num_steps):
            raise ValueError(f"timesteps must lie in [0, num_steps={self.num_steps}), got {t.min()}..{t.max()}")
        parts = [self.fourier(v), self.step_embed(t)]
        if self.label_embed is not None:
            if y is None:
                raise ValueError(f"y (class labels) is required: num_classes={self.num_classes}")
            parts.append(self.label_embed(check_labels(y, v.shape[0], self.num_classes, type(self).__name__)))
        elif y is not None:
            raise ValueError("y was given but the net is unconditional (num_classes=None)")
        return self.layers(torch.cat(parts, dim=1))


class MLPGenerator(StepMLP):
    """G_θ(x_t, t, z[, y]) -> x̂_0: x_t: [N, data_dim], t: int64 [N] in [0, num_steps), z: [N, nz] (y: [N]) ->
    [N, data_dim]. The trunk reads concat(γ(concat(x_t, z)), E_t[t][, E_y[y]]); a linear head gives x̂_0."""

    input_name = "concat(x_t, z)"

    def __init__(self, data_dim: int = 2, nz: int = 4, width: int = 128, depth: int = 3,
                 num_classes: int | None = None, num_steps: int = 8, fourier_sigma: float = 0.0,
                 num_frequencies: int = 64):
        self.nz, self.data_dim = _check_int("nz", nz), _check_int("data_dim", data_dim)
        super().__init__(data_dim + nz, width, depth, num_steps, num_classes, fourier_sigma, num_frequencies)
        self.out = nn.Linear(width, data_dim)

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, z: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """x_t: [N, data_dim], timesteps: [N], z: [N, nz] -> x̂_0: [N, data_dim]."""
        if x_t.dim() != 2 or x_t.shape[1] != self.data_dim:
            raise ValueError(f"MLPGenerator: x_t must be [N, {self.data_dim}], got {tuple(x_t.shape)}")
        if z.dim() != 2 or tuple(z.shape) != (x_t.shape[0], self.nz):
            raise ValueError(f"z must be [N, nz] = [{x_t.shape[0]}, {self.nz}], got {tuple(z.shape)}")
        return self.out(self.features(torch.cat([x_t, z.to(x_t.dtype)], dim=1), timesteps, y))


class MLPSIDDMDiscriminator(StepMLP):
    """SIDDM's D_φ / C_ψ pair on one trunk: (x_{t−1}: [N, data_dim], t: [N][, y: [N]]) -> (logit [N], afd_pred
    [N, data_dim] = C_ψ(x_{t−1}) predicting x_t, denoised [N, data_dim] predicting x_0), three linear heads."""

    input_name = "x_prev"

    def __init__(self, data_dim: int = 2, width: int = 128, depth: int = 3, num_classes: int | None = None,
                 num_steps: int = 8, fourier_sigma: float = 0.0, num_frequencies: int = 64):
        super().__init__(data_dim, width, depth, num_steps, num_classes, fourier_sigma, num_frequencies)
        self.out = nn.Linear(width, 1)
        self.afd_head = nn.Linear(width, data_dim)
        self.denoise_head = nn.Linear(width, data_dim)

    def forward(self, x_prev: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None):
        """x_prev: [N, data_dim], timesteps: [N] -> (logit [N], afd_pred [N, data_dim], denoised [N, data_dim])."""
        h = self.features(x_prev, timesteps, y)
        return self.out(h)[:, 0], self.afd_head(h), self.denoise_head(h)


class MLPDDGANDiscriminator(StepMLP):
    """DDGAN's joint D_φ(x_{t−1}, x_t, t) (Xiao et al. 2022 eq. 6): logit [N] of concat(x_{t−1}, x_t): [N, 2·data_dim]
    (Fourier features over the pair) with the step (and label) embedding."""

    input_name = "concat(x_prev, x_t)"

    def __init__(self, data_dim: int = 2, width: int = 128, depth: int = 3, num_classes: int | None = None,
                 num_steps: int = 8, fourier_sigma: float = 0.0, num_frequencies: int = 64):
        super().__init__(2 * data_dim, width, depth, num_steps, num_classes, fourier_sigma, num_frequencies)
        self.out = nn.Linear(width, 1)

    def forward(self, x_prev: torch.Tensor, timesteps: torch.Tensor, x_t: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """x_prev, x_t: [N, data_dim], timesteps: [N] -> logit [N]."""
        if x_prev.shape != x_t.shape:
            raise ValueError(f"x_prev and x_t must have one shape, got {tuple(x_prev.shape)} and "
                             f"{tuple(x_t.shape)}")
        return self.out(self.features(torch.cat([x_prev, x_t], dim=1), timesteps, y))[:, 0]
