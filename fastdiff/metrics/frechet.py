"""Fréchet distance between Gaussian fits of feature sets (Heusel et al. 2017, FID; Dowson & Landau 1982).

d² = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}), computed in float64 as pytorch-fid / guided-diffusion's
evaluator do: scipy.linalg.sqrtm of Σ1 Σ2; when that square root is not finite (near-singular covariances, e.g.
fewer samples than features) it is retried on (Σ1 + εI)(Σ2 + εI); a complex result is accepted only when the
imaginary part of its diagonal is negligible (|Im| ≤ 1e-3), and its real part is used.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

SQRTM_EPS = 1e-6
IMAG_ATOL = 1e-3


def _as_float64(name: str, value, ndim: int) -> np.ndarray:
    """value (tensor or array-like) as a finite float64 numpy array with `ndim` dimensions, else ValueError."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return arr


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean μ [F] and unbiased covariance Σ [F, F] (float64 numpy) of features: [N, F], N >= 2."""
    f = _as_float64("features", features, 2)
    if f.shape[0] < 2:
        raise ValueError(f"features needs at least 2 rows for a covariance, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrtm_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> np.ndarray:
    """(Σ1 Σ2)^{1/2} by scipy.linalg.sqrtm, with the εI-offset retry and the imaginary-part check."""
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        logger.warning("frechet_distance: sqrtm(Σ1 Σ2) is not finite; adding %g to the covariance diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > IMAG_ATOL:
            raise ValueError(f"frechet_distance: sqrtm(Σ1 Σ2) has an imaginary diagonal component {imag:.3g} "
                             f"> {IMAG_ATOL} (covariances not positive semi-definite?)")
        covmean = covmean.real
    return covmean


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = SQRTM_EPS) -> float:
    """Squared Fréchet distance of N(μ1, Σ1) and N(μ2, Σ2) (FID, Heusel et al. 2017 eq. 6), as a float.

    mu1, mu2: [F]; sigma1, sigma2: [F, F] (tensors or arrays; computed in float64). eps: the diagonal offset
    of the retry when the plain square root is not finite. Rounding can make the result slightly negative
    (~1e-10 Tr Σ) for identical inputs.
    """
    mu1, mu2 = _as_float64("mu1", mu1, 1), _as_float64("mu2", mu2, 1)
    sigma1, sigma2 = _as_float64("sigma1", sigma1, 2), _as_float64("sigma2", sigma2, 2)
    f = mu1.shape[0]
    if mu2.shape != (f,) or sigma1.shape != (f, f) or sigma2.shape != (f, f):
        raise ValueError(f"mu1, mu2 must be [F] and sigma1, sigma2 [F, F] with one F, got {mu1.shape}, "
                         f"{mu2.shape}, {sigma1.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm_product(sigma1, sigma2, eps)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def feature_fd(features1, features2) -> float:
    """Fréchet distance of the Gaussian fits of two feature sets: [N1, F] and [N2, F]."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))
