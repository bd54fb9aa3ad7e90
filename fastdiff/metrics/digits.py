"""Sample-quality metrics of digit images in the feature space of the shipped digits classifier.

`digits_fd` is FID with the Inception network replaced by `DigitsClassifier.features` (64-d); the reference
set defaults to all 1797 digits. Samples are [N, 1, S, S] in [-1, 1] with S = 8, 16 or 32.

Compare at one resolution: 16×16 / 32×32 images are average-pooled to 8×8, which blurs the upsampled digits
(bilinear up then box down is not the identity), so for S ≠ 8 pass `reference=load_digits(S).x`. Measured with
the shipped weights: held-out vs train digits FD 17.8 at S = 8 and 11.1 at S = 16 and 32 (each against its own
resolution), but 76.7 for 16×16 held-out digits against the default 8×8 reference; uniform noise ~600.
"""
from __future__ import annotations

import functools

import torch

from fastdiff.metrics.digits_classifier import load_digits_classifier
from fastdiff.metrics.frechet import frechet_distance, gaussian_stats
from fastdiff.metrics.precision_recall import precision_recall

FEATURE_BATCH = 1024


@torch.no_grad()
def digits_features(images: torch.Tensor, batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """Classifier features [N, 64] (float32, images' device) of images: [N, 1, S, S] in [-1, 1]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [N, 1, S, S], got {type(images).__name__}")
    model = load_digits_classifier(images.device)
    return torch.cat([model.features(b) for b in images.split(batch_size)]) if images.shape[0] else \
        images.new_zeros(0, model.feature_dim)


@functools.lru_cache(maxsize=1)
def _all_digits_features() -> torch.Tensor:
    """Features [1797, 64] of every 8×8 digit (CPU), computed once."""
    from fastdiff.data import load_digits

    return digits_features(load_digits(8).x)


@functools.lru_cache(maxsize=1)
def _all_digits_stats():
    """(μ, Σ) of the features of all 1797 digits."""
    return gaussian_stats(_all_digits_features())


def digits_fd(samples: torch.Tensor, reference: torch.Tensor | None = None) -> float:
    """Fréchet distance between classifier features of samples: [N, 1, S, S] and reference: [M, 1, S', S']
    (default: all 1797 digits), N, M >= 2."""
    mu, sigma = gaussian_stats(digits_features(samples))
    ref_stats = _all_digits_stats() if reference is None else gaussian_stats(digits_features(reference))
    return frechet_distance(mu, sigma, *ref_stats)


def digits_precision_recall(samples: torch.Tensor, reference: torch.Tensor | None = None,
                            k: int = 3) -> tuple[float, float]:
    """(precision, recall) of samples against reference (default: all 1797 digits) in classifier features,
    k-NN manifolds (Kynkäänniemi et al. 2019)."""
    ref = _all_digits_features() if reference is None else digits_features(reference)
    return precision_recall(ref, digits_features(samples), k=k)


@torch.no_grad()
def classifier_accuracy(samples: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of class-conditional samples: [N, 1, S, S] that the classifier assigns to their intended class
    labels: int [N] in 0..9."""
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.shape != (samples.shape[0],):
        raise ValueError(f"labels must be an integer tensor [N] = [{samples.shape[0]}], got "
                         f"{labels.dtype} {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("samples must not be empty")
    model = load_digits_classifier(samples.device)
    pred = torch.cat([model.logits(b).argmax(1) for b in samples.split(FEATURE_BATCH)])
    return float((pred == labels.to(pred.device)).double().mean())

