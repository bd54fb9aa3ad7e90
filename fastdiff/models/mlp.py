"""A residual MLP ε-model for low-dimensional data (the 2-D toys): the time (and class) embedding of ADM
(sinusoidal features → Linear → SiLU → Linear, plus a label embedding) added to every residual block."""
from __future__ import annotations

import torch
from torch import nn

from fastdiff.models.nn import check_labels, timestep_embedding


class _Block(nn.Module):
    """h + Linear(SiLU(Linear(SiLU(LayerNorm(h)) + emb)))."""

    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.fc1(self.act(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.act(z))


class MLPDenoiser(nn.Module):
    """ε_θ(x_t, t[, y]) for x: [N, data_dim], timesteps: [N], y: [N] (when num_classes is set) -> [N, out_dim].

    out_dim defaults to data_dim (2·data_dim for a learned variance, as UNetModel's out_channels).
    """

    def __init__(self, data_dim: int = 2, width: int = 256, depth: int = 3, out_dim: int | None = None,
                 num_classes: int | None = None, time_dim: int = 128):
        super().__init__()
        for name, v in (("data_dim", data_dim), ("width", width), ("depth", depth), ("time_dim", time_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"MLPDenoiser: {name} must be a positive int, got {v!r}")
        self.data_dim, self.time_dim, self.num_classes = data_dim, time_dim, num_classes
        emb_dim = 4 * time_dim
        self.time_embed = nn.Sequential(nn.Linear(time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)
        self.inp = nn.Linear(data_dim, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, out_dim or data_dim))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x: [N, data_dim], timesteps: [N] (y: [N]) -> [N, out_dim]."""
        return self.out(self.features(x, timesteps, y))

    def features(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None,
                 emb: torch.Tensor | None = None) -> torch.Tensor:
        """The trunk before the output head: x: [N, data_dim], timesteps: [N] (y: [N]) -> h: [N, width]; `emb`
        ([N, 4·time_dim], e.g. an embedded latent z) is added to the time (and label) embedding."""
        if x.dim() != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"MLPDenoiser: x must be [N, {self.data_dim}], got {tuple(x.shape)}")
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("pass class labels y if and only if the model is class-conditional "
                             f"(num_classes={self.num_classes})")
        t_emb = self.time_embed(timestep_embedding(timesteps.expand(x.shape[0]) if timesteps.dim() == 0
                                                   else timesteps, self.time_dim))
        emb = t_emb if emb is None else t_emb + emb
        if y is not None:
            emb = emb + self.label_emb(check_labels(y, x.shape[0], self.num_classes, "MLPDenoiser"))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return h
