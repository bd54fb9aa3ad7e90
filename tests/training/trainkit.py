"""Tiny models, diffusions and data for the training tests (also imported by the subprocess script run_train.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastdiff.diffusion import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    get_named_beta_schedule,
)
from fastdiff.models import UNetModel


@dataclass
class TensorData:
    """Stand-in for fastdiff.data.ArrayDataset: x [N, C, H, W] in [-1, 1], y int64 [N] or None."""

    x: torch.Tensor
    y: torch.Tensor | None = None


def make_unet(*, learn_sigma: bool = False, num_classes: int | None = None, seed: int = 0,
              in_channels: int = 1) -> UNetModel:
    """A ~160k-parameter ADM UNet for 8x8 images (32 channels, one level, one res block, no attention)."""
    torch.manual_seed(seed)
    return UNetModel(image_size=8, in_channels=in_channels, model_channels=32,
                     out_channels=in_channels * (2 if learn_sigma else 1), num_res_blocks=1,
                     attention_resolutions=(), channel_mult=(1,), num_classes=num_classes)


def make_diffusion(*, loss: str = "mse", var: str = "fixed_small", schedule: str = "cosine",
                   steps: int = 100) -> GaussianDiffusion:
    """GaussianDiffusion with ε-prediction; loss / var are LossType / ModelVarType member names (lower case)."""
    return GaussianDiffusion(betas=get_named_beta_schedule(schedule, steps), model_mean_type=ModelMeanType.EPSILON,
                             model_var_type=ModelVarType[var.upper()], loss_type=LossType[loss.upper()])


def make_dataset(n: int = 64, *, num_classes: int | None = None, seed: int = 0, channels: int = 1) -> TensorData:
    """n images: one random ±0.8 pattern per class plus N(0, 0.1²) noise, clamped to [-1, 1] (a learnable set)."""
    g = torch.Generator().manual_seed(seed)
    k = num_classes or 4
    patterns = torch.where(torch.rand(k, channels, 8, 8, generator=g) < 0.5, -0.8, 0.8)
    y = torch.randint(0, k, (n,), generator=g)
    x = (patterns[y] + 0.1 * torch.randn(n, channels, 8, 8, generator=g)).clamp(-1, 1)
    return TensorData(x, y if num_classes is not None else None)


def assert_tree_equal(a, b, path: str = "", atol: float | None = None) -> int:
    """Recursively compare nested dicts / lists / tensors / scalars: torch.equal on tensors (or |a − b| <= atol
    when atol is given); returns the number of tensors compared."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        return sum(assert_tree_equal(a[k], b[k], f"{path}/{k}", atol) for k in a)
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: lengths differ"
        return sum(assert_tree_equal(x, y, f"{path}[{i}]", atol) for i, (x, y) in enumerate(zip(a, b)))
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, f"{path}: tensor meta"
        if atol is None:
            assert torch.equal(a, b), f"{path}: tensors differ (max |diff| {(a.double() - b.double()).abs().max()})"
        else:
            diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
            assert diff <= atol, f"{path}: max |diff| {diff} > {atol}"
        return 1
    if atol is not None and isinstance(a, float):
        assert abs(a - b) <= atol, f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
    return 0
