"""MLP networks of the few-step adversarial denoisers (DDGAN, Xiao et al. 2022; SIDDM, Xu et al. 2023) for 2-D data,
built on MLPDenoiser's time-embedded residual trunk. They follow the call contract of
`fastdiff.training.adversarial`:

- `MLPGenerator`: G_θ(x_t, t, z[, y]) -> x̂_0, the generator of p_θ(x_{t−1} | x_t) = q(x_{t−1} | x_t, x̂_0)
  (DDGAN eq. 8; SIDDM §3.2). The latent z enters twice: concatenated to x_t and embedded into the time embedding
  (the MLP analogue of DDGAN's z-modulated normalisation).
- `MLPSIDDMDiscriminator`: one shared trunk on (x_{t−1}, t) with three heads: the logit of D_φ(x_{t−1}, t), the AFD
  regression C_ψ(x_{t−1}) ≈ x_t (SIDDM: "the discriminator and the regression model share most layers") and the
  denoising output ≈ x_0 of the discriminator regulariser (SIDDM §3.3).
- `MLPDDGANDiscriminator`: DDGAN's joint D_φ(x_{t−1}, x_t, t) on the concatenated pair.

`in_scale` (default 1: off) multiplies every data-space input (x_t, x_{t−1}) before the first layer, and the
generator divides its x̂_0 by it: the nets work on data · in_scale. MLPs learn high-frequency functions slowly
(spectral bias), so data with fine structure on a small scale (siddm-mog: modes of std 0.04, 0.4 apart) is easier at
in_scale ≈ 10, without changing the diffusion's data scale.
"""
from __future__ import annotations

import torch
from torch import nn

from fastdiff.models.discriminator import MLPDiscriminator
from fastdiff.models.mlp import MLPDenoiser


def _head(width: int, out_dim: int) -> nn.Sequential:
    """LayerNorm → SiLU → Linear, MLPDenoiser's output head."""
    return nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, out_dim))


def _check_scale(in_scale) -> float:
    if isinstance(in_scale, bool) or not isinstance(in_scale, (int, float)) or not in_scale > 0 \
            or in_scale == float("inf"):
        raise ValueError(f"in_scale must be a finite number > 0, got {in_scale!r}")
    return float(in_scale)


def _check_latent(z: torch.Tensor, n: int, nz: int) -> None:
    if z.dim() != 2 or tuple(z.shape) != (n, nz):
        raise ValueError(f"z must be [N, nz] = [{n}, {nz}], got {tuple(z.shape)}")


class MLPGenerator(MLPDenoiser):
    """G_θ(x_t, t, z[, y]) -> x̂_0: x_t: [N, data_dim], t: int64 [N] in [0, T), z: [N, nz] (y: [N]) -> [N, data_dim].

    The trunk reads concat(x_t · in_scale, z) with the time embedding plus an embedding of z added to every residual
    block; its output is x̂_0 · in_scale (returned divided by in_scale).
    """

    def __init__(self, data_dim: int = 2, nz: int = 2, width: int = 256, depth: int = 3,
                 num_classes: int | None = None, time_dim: int = 128, in_scale: float = 1.0):
        if isinstance(nz, bool) or not isinstance(nz, int) or nz < 1:
            raise ValueError(f"MLPGenerator: nz must be a positive int, got {nz!r}")
        super().__init__(data_dim=data_dim + nz, width=width, depth=depth, out_dim=data_dim,
                         num_classes=num_classes, time_dim=time_dim)
        self.x_dim, self.nz = data_dim, nz
        self.in_scale = _check_scale(in_scale)
        emb_dim = 4 * time_dim
        self.z_embed = nn.Sequential(nn.Linear(nz, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, z: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """x_t: [N, data_dim], timesteps: [N], z: [N, nz] -> x̂_0: [N, data_dim]."""
        if x_t.dim() != 2 or x_t.shape[1] != self.x_dim:
            raise ValueError(f"MLPGenerator: x_t must be [N, {self.x_dim}], got {tuple(x_t.shape)}")
        _check_latent(z, x_t.shape[0], self.nz)
        h = self.features(torch.cat([x_t * self.in_scale, z.to(x_t.dtype)], dim=1), timesteps, y,
                          emb=self.z_embed(z))
        return self.out(h) / self.in_scale


class MLPSIDDMDiscriminator(MLPDenoiser):
    """SIDDM's D_φ / C_ψ pair on one trunk: (x_{t−1}: [N, data_dim], t: [N][, y: [N]]) -> (logit [N], afd_pred
    [N, data_dim] = C_ψ(x_{t−1}) predicting x_t, denoised [N, data_dim] predicting x_0).

    The logit head is MLPDenoiser's `out` (one unit); `afd_head` and `denoise_head` read the same features.
    """

    def __init__(self, data_dim: int = 2, width: int = 256, depth: int = 2, num_classes: int | None = None,
                 time_dim: int = 128, in_scale: float = 1.0):
        super().__init__(data_dim=data_dim, width=width, depth=depth, out_dim=1, num_classes=num_classes,
                         time_dim=time_dim)
        self.in_scale = _check_scale(in_scale)
        self.afd_head = _head(width, data_dim)
        self.denoise_head = _head(width, data_dim)

    def forward(self, x_prev: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None):
        """x_prev: [N, data_dim], timesteps: [N] -> (logit [N], afd_pred [N, data_dim], denoised [N, data_dim])."""
        h = self.features(x_prev * self.in_scale, timesteps, y)
        return self.out(h)[:, 0], self.afd_head(h), self.denoise_head(h)


class MLPDDGANDiscriminator(MLPDiscriminator):
    """DDGAN's joint D_φ(x_{t−1}, x_t, t) (Xiao et al. 2022 eq. 6): logit [N] of concat(x_{t−1}, x_t): [N, 2·data_dim]
    with the time (and label) embedding."""

    def __init__(self, data_dim: int = 2, width: int = 256, depth: int = 2, num_classes: int | None = None,
                 time_dim: int = 128, in_scale: float = 1.0):
        super().__init__(data_dim=2 * data_dim, width=width, depth=depth, num_classes=num_classes,
                         time_dim=time_dim)
        self.x_dim = data_dim
        self.in_scale = _check_scale(in_scale)

    def forward(self, x_prev: torch.Tensor, timesteps: torch.Tensor, x_t: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """x_prev, x_t: [N, data_dim], timesteps: [N] -> logit [N]."""
        if x_prev.shape != x_t.shape:
            raise ValueError(f"x_prev and x_t must have one shape, got {tuple(x_prev.shape)} and "
                             f"{tuple(x_t.shape)}")
        return super().forward(torch.cat([x_prev, x_t], dim=1) * self.in_scale, timesteps, y)
