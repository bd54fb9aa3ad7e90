"""fastdiff.metrics.toy2d: gaussian_fd and mmd against closed forms on Gaussian samples."""
import math

import pytest
import torch

from fastdiff.data import toy_dataset
from fastdiff.metrics import gaussian_fd, mmd


def test_gaussian_fd_of_diagonal_gaussians():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.tensor([0.5, -1.0]), torch.tensor([-0.5, 0.0])
    s1, s2 = torch.tensor([1.0, 0.3]), torch.tensor([0.5, 0.6])
    x = torch.randn(200000, 2, generator=g) * s1 + mu1
    y = torch.randn(200000, 2, generator=g) * s2 + mu2
    want = float((mu1 - mu2).square().sum() + (s1 - s2).square().sum())    # 2.34
    assert gaussian_fd(x, y) == pytest.approx(want, abs=0.02)
    assert abs(gaussian_fd(x, x)) < 1e-8


def test_mmd_closed_form_single_bandwidth():
    # x ~ N(0, s²I), y ~ N(δ, s²I) in D = 2, k = exp(−‖a−b‖²/(2σ²)):
    # MMD² = 2 c (1 − exp(−‖δ‖² / (2(σ² + 2s²)))), c = (σ² / (σ² + 2s²))^{D/2}
    g = torch.Generator().manual_seed(1)
    s, sig, delta = 0.5, 0.7, torch.tensor([0.6, 0.0])
    c = sig ** 2 / (sig ** 2 + 2 * s ** 2)
    want = 2 * c * (1 - math.exp(-float(delta.square().sum()) / (2 * (sig ** 2 + 2 * s ** 2))))   # 0.165
    x = torch.randn(2000, 2, generator=g) * s
    y = torch.randn(2000, 2, generator=g) * s + delta
    assert mmd(x, y, bandwidths=[sig]) == pytest.approx(want, abs=0.03)    # estimator std ~0.008 at n = 2000
    same = mmd(x, torch.randn(2000, 2, generator=g) * s, bandwidths=[sig])
    assert abs(same) < 0.005


def test_mmd_on_toy_data_same_vs_shifted():
    a = toy_dataset("grid25", n=1500, seed=2).x
    b = toy_dataset("grid25", n=1500, seed=3).x
    shifted = b + torch.tensor([0.2, 0.0])
    same, diff = mmd(a, b), mmd(a, shifted)
    assert abs(same) < 0.02 and diff > 0.1        # measured 8e-4 and 0.20
    assert diff > 20 * abs(same)


def test_mmd_unbiased_on_identical_pairs():
    # the unbiased estimator drops the diagonal: for two i.i.d. sets its mean over seeds is ~0, not > 0
    vals = []
    for seed in range(8):
        g = torch.Generator().manual_seed(10 + seed)
        vals.append(mmd(torch.randn(100, 2, generator=g), torch.randn(100, 2, generator=g), bandwidths=[1.0]))
    biased_offset = 2 * (1 - (1 / 3)) / 100          # what V-statistic diagonals would add: ~0.013
    assert abs(sum(vals) / len(vals)) < biased_offset / 2


def test_mmd_errors():
    x = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, x, bandwidths=[0.0])
    with pytest.raises(ValueError, match="one dimension"):
        mmd(x, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="y"):
        mmd(x, torch.zeros(1, 2))


def test_mode_mmd_sees_narrow_modes():
    """Modes drawn at 0.7× the data's width: mode_mmd (one RBF kernel of the mode width, 0.5 on siddm-mog's grid)
    rises far above its value for fresh data samples."""
    import importlib

    from fastdiff.metrics import mode_mmd, nearest_mode

    mog25 = importlib.import_module("fastdiff.experiments.siddm_mog").mog25
    m = mog25()
    g = torch.Generator().manual_seed(4)
    ref, fresh, x = (m.sample(2000, generator=g) for _ in range(3))
    c = m.means[nearest_mode(x, m)[0]].float()
    narrow = c + 0.7 * (x - c)
    assert mode_mmd(narrow, ref, m) == pytest.approx(mmd(narrow, ref, bandwidths=[0.5]))
    same, shrunk = mode_mmd(fresh, ref, m), mode_mmd(narrow, ref, m)
    assert abs(same) < 5e-4 and shrunk > 1e-3          # seeds 4-8: |same| ≤ 1.6e-4, shrunk 1.1e-3 to 1.6e-3
