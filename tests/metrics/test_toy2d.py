"""fastdiff.metrics.toy2d.mode_stats on crafted samples: all modes, missing modes, outliers, thresholds."""
import json
import math

import pytest
import torch

from fastdiff.data import GaussianMixture, grid25
from fastdiff.metrics import mode_stats, nearest_mode
from fastdiff.metrics.toy2d import truncated_std_factor


def _rng():
    seed = int(torch.randint(0, 2**31, (1,)).item())
    return torch.Generator().manual_seed(seed), seed


def test_exact_samples_cover_all_modes():
    g, seed = _rng()
    m = grid25()
    n = 5000
    s = mode_stats(m.sample(n, generator=g), m)
    assert s.modes_covered == 25 and s.n_modes == 25 and s.all_covered, seed
    share = 1 - math.exp(-4.5)  # P(|z| <= 3) for a 2-D standard normal
    sd = math.sqrt(share * (1 - share) / n)
    assert abs(s.high_quality_share - share) < 5 * sd, (seed, s.high_quality_share)
    assert sum(s.counts) == round(s.high_quality_share * n) and s.min_counts == [math.ceil(0.1 * n / 25)] * 25
    json.dumps(s.to_dict())


def test_missing_modes_are_reported():
    g, seed = _rng()
    m = grid25()
    keep = torch.randperm(25, generator=g)[:18]
    sub = GaussianMixture(m.means[keep], m.std[keep])
    s = mode_stats(sub.sample(3000, generator=g), m)
    assert s.modes_covered == 18, seed
    counts = torch.tensor(s.counts)
    missing = torch.ones(25, dtype=torch.bool)
    missing[keep] = False
    assert (counts[missing] == 0).all() and (counts[keep] > 0).all(), seed


def test_outliers_lower_the_share_exactly():
    g, seed = _rng()
    m = grid25()
    good = m.means[torch.randint(0, 25, (400,), generator=g)] + 0.5 * m.std[0] * torch.randn(
        400, 2, generator=g, dtype=torch.float64).clamp(-2, 2)
    # cell midpoints and far-away points: ≥ 0.35 from every centre, i.e. ≥ 20 std
    mids = (m.means[:20] + torch.tensor([0.3536, 0.3536], dtype=torch.float64))
    far = torch.tensor([[5.0, 5.0], [-7.0, 0.1], [0.0, 30.0]], dtype=torch.float64)
    x = torch.cat([good, mids, far])[torch.randperm(423, generator=g)].float()
    s = mode_stats(x, m)
    assert s.high_quality_share == pytest.approx(400 / 423), seed
    assert sum(s.counts) == 400


def test_coverage_threshold_and_single_outlier():
    """A mode reached by fewer than min_share of its expected samples is not covered (one stray point)."""
    m = grid25()
    n_per = 100
    x = m.means.repeat_interleave(n_per, 0)[: 24 * n_per]  # modes 0..23, 100 each, exactly on centres
    stray = m.means[24:25] + torch.tensor([[0.01, 0.0]], dtype=torch.float64)
    s = mode_stats(torch.cat([x, stray]).float(), m)
    # n = 2401, expected 96 per mode, threshold ceil(9.6) = 10: the single sample at mode 24 is not coverage
    assert s.min_counts[24] == 10 and s.counts[24] == 1 and s.modes_covered == 24
    s0 = mode_stats(torch.cat([x, stray]).float(), m, min_share=0.0)
    assert s0.modes_covered == 25 and s0.min_counts[24] == 1


def test_per_component_std_and_nan():
    m = GaussianMixture(torch.tensor([[0.0, 0.0], [10.0, 0.0]]), torch.tensor([0.1, 1.0]))
    x = torch.tensor([[0.5, 0.0],      # 5 std from mode 0: not high quality
                      [0.25, 0.0],     # 2.5 std: high quality
                      [12.0, 0.0],     # 2 std of mode 1: high quality
                      [10.0, 3.5],     # 3.5 std of mode 1: not
                      [float("nan"), 0.0],
                      [float("inf"), 1.0]])
    s = mode_stats(x, m, min_share=0.0)
    assert s.counts == [1, 1] and s.nonfinite == 2 and s.high_quality_share == pytest.approx(2 / 6)
    idx, d = nearest_mode(x, m)
    assert idx[:4].tolist() == [0, 0, 1, 1] and math.isinf(d[4]) and math.isinf(d[5])
    assert mode_stats(x, m, n_std=4.0, min_share=0.0).counts == [1, 2]


def test_bad_inputs():
    m = grid25()
    with pytest.raises(ValueError):
        mode_stats(torch.randn(10, 3), m)
    with pytest.raises(ValueError):
        mode_stats(torch.randn(10, 2), m, n_std=0.0)
    with pytest.raises(ValueError):
        mode_stats(torch.randn(10, 2), m, min_share=2.0)
    s = mode_stats(torch.zeros(0, 2), m)
    assert s.modes_covered == 0 and s.high_quality_share == 0.0


def _rescaled(x: torch.Tensor, m: GaussianMixture, scale: float) -> torch.Tensor:
    """Every sample moved to `scale` times its offset from its nearest centre: each mode `scale` times as wide."""
    c = m.means[nearest_mode(x, m)[0]].to(x.dtype)
    return c + (x - c) * scale


def test_truncated_std_factor_matches_monte_carlo():
    g, seed = _rng()
    for dim in (1, 2, 5):
        z = torch.randn(400_000, dim, generator=g, dtype=torch.float64)
        kept = z[z.norm(dim=1) <= 3.0]
        assert truncated_std_factor(3.0, dim) == pytest.approx(float(kept.square().mean().sqrt()), rel=3e-3), seed
    assert truncated_std_factor(3.0, 2) == pytest.approx(math.sqrt((1 - 5.5 * math.exp(-4.5)) / (1 - math.exp(-4.5))))


def test_spread_ratio_sees_collapsed_and_widened_modes():
    """Exact samples: every mode's ratio near 1; modes drawn at 0.5× / 1.2× their width: ratios near 0.5 / 1.2,
    while coverage and (for the narrow ones) the within-3σ share stay perfect."""
    g, seed = _rng()
    m = grid25()
    x = m.sample(10_000, generator=g)
    s = mode_stats(x, m)
    assert s.mean_spread == pytest.approx(1.0, abs=0.03) and 0.85 < s.worst_spread < 1.15, seed
    narrow = mode_stats(_rescaled(x, m, 0.5), m)
    assert narrow.all_covered and narrow.high_quality_share == 1.0
    assert narrow.mean_spread == pytest.approx(0.5, abs=0.02) and narrow.worst_spread < 0.6, seed
    wide = mode_stats(_rescaled(x, m, 1.2), m)
    assert wide.mean_spread == pytest.approx(1.2 * 0.985, abs=0.04) and wide.worst_spread > 1.1, seed  # cut: 0.985


def test_spread_ratio_worst_is_farthest_in_log_and_nan_for_uncovered():
    m = GaussianMixture(torch.tensor([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]]), 1.0)
    g, seed = _rng()
    a = torch.randn(400, 2, generator=g)
    a = (a - a.mean(0)) / a.std(0, keepdim=True).mean()
    x = torch.cat([0.45 * a, m.means[1].float() + 1.6 * a.clamp(-1.5, 1.5)])  # mode 0 narrow, mode 1 wide, none at 2
    s = mode_stats(x, m)
    assert s.modes_covered == 2 and math.isnan(s.spread[2]), seed
    assert s.spread[0] < 0.5 and 1.3 < s.spread[1] < 2.0, (seed, s.spread)  # |log 0.45| > |log 1.6|
    assert s.worst_spread == s.spread[0]
    s_wide = mode_stats(torch.cat([0.8 * a, m.means[1].float() + 1.6 * a.clamp(-1.5, 1.5)]), m)
    assert s_wide.worst_spread == s_wide.spread[1], seed
    assert s.mean_spread == pytest.approx((s.spread[0] + s.spread[1]) / 2)
    empty = mode_stats(torch.zeros(0, 2), m)
    assert math.isnan(empty.mean_spread) and math.isnan(empty.worst_spread)
    json.dumps(s.to_dict())


def test_weight_tv_sees_unbalanced_modes():
    """Exact samples: TV near 0; half the samples moved onto mode 0: TV = 0.5·(1 − 1/25) + noise, though all 25
    modes stay covered; no high-quality sample: NaN."""
    g, seed = _rng()
    m = grid25()
    x = m.sample(5000, generator=g)
    assert mode_stats(x, m).weight_tv < 0.06, seed
    crowded = x.clone()
    crowded[:2500] = m.means[0].float() + float(m.std[0]) * torch.randn(2500, 2, generator=g)
    s = mode_stats(crowded, m)
    assert s.all_covered and s.weight_tv == pytest.approx(0.5 * 24 / 25, abs=0.05), seed
    assert math.isnan(mode_stats(torch.full((3, 2), 100.0), m).weight_tv)
