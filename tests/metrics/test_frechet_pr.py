"""frechet_distance / gaussian_stats and k-NN precision_recall against closed forms."""
import numpy as np
import pytest
import torch

from fastdiff.metrics import feature_fd, frechet_distance, gaussian_stats, precision_recall


def _spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _psd_sqrt(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_fd_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 7
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.2, 2.0, d), rng.uniform(0.2, 2.0, d)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    got = frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2))
    assert isinstance(got, float)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-10)
    # tensors work the same way
    assert frechet_distance(*(torch.as_tensor(a) for a in (mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2)))) \
        == pytest.approx(want, rel=1e-9)


def test_fd_full_covariance_matches_symmetric_formula():
    # Tr (Σ1 Σ2)^{1/2} = Tr (Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}: an independent, symmetric route to the same value
    rng = np.random.default_rng(1)
    d = 12
    mu1, mu2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), _spd(rng, d), _spd(rng, d)
    r1 = _psd_sqrt(s1)
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(_psd_sqrt(r1 @ s2 @ r1))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)
    # symmetric in its two Gaussians
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(want, rel=1e-8)


def test_fd_self_zero_and_singular_covariance_fallback():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(500, 16, generator=g) @ torch.randn(16, 16, generator=g)
    mu, sigma = gaussian_stats(feats)
    assert mu.shape == (16,) and sigma.shape == (16, 16)
    assert np.allclose(mu, feats.double().mean(0).numpy()) and np.allclose(sigma, np.cov(feats.double().numpy().T))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    # fewer samples than features: rank-deficient covariances still give a finite, non-negative distance
    few1, few2 = torch.randn(10, 32, generator=g), torch.randn(10, 32, generator=g) + 3.0
    fd = feature_fd(few1, few2)
    assert np.isfinite(fd) and fd > 32 * 9 * 0.5     # the mean shift alone gives ‖Δμ‖² ≈ 32·9


def test_fd_errors():
    with pytest.raises(ValueError, match="mu1"):
        frechet_distance(np.zeros((2, 2)), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="F"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="finite"):
        frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="2 rows"):
        gaussian_stats(torch.zeros(1, 3))


def test_precision_recall_identical_and_disjoint():
    g = torch.Generator().manual_seed(3)
    real = torch.randn(300, 8, generator=g)
    assert precision_recall(real, real.clone(), k=3) == (1.0, 1.0)
    far = torch.randn(200, 8, generator=g) + 100.0
    assert precision_recall(real, far, k=3) == (0.0, 0.0)


def test_precision_recall_hand_computed_1d():
    # real: 0..9 on a line, k = 1 -> every radius 1; fake: 0.5 (inside) and 20 (outside) -> precision 1/2.
    # fake radii (k = 1): both 19.5, so every real point lies within 19.5 of 0.5 -> recall 1.
    real = torch.arange(10.0)[:, None]
    fake = torch.tensor([[0.5], [20.0]])
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    # k = 2: real radii 2 (ends) ... fake needs > 2 rows
    with pytest.raises(ValueError, match="fake_features"):
        precision_recall(real, fake, k=2)
    # a fake set covering only half of the real line: precision 1, recall ~ half
    half = torch.linspace(0, 4, 9)[:, None]
    p, r = precision_recall(real, half, k=1)
    assert p == 1.0 and r == 0.5                     # fake radii 0.5: real 0..4 covered, 5..9 not


def test_precision_recall_errors():
    x = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="k"):
        precision_recall(x, x, k=0)
    with pytest.raises(ValueError, match="feature size"):
        precision_recall(x, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="real_features"):
        precision_recall(torch.zeros(5), x)
