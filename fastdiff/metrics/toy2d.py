"""Mode coverage and sample quality on 2-D Gaussian mixtures (VEEGAN / PacGAN / DDGAN protocol).

A sample is *high quality* when it lies within `n_std` standard deviations (Euclidean distance
≤ n_std · s_k) of its nearest centre μ_k (VEEGAN, Srivastava et al. 2017, §5.1; DDGAN Table 4 uses 3 std).
A mode is *covered* when at least `min_share` of the high-quality samples a perfect sampler would put
there land there: count_k ≥ max(1, min_share · n · w_k). The default min_share = 0.1 (10 % of the expected
count, e.g. 8 of 80 expected with n = 2000 on the 25-grid) is far below what a correct sampler gives
(binomial spread ±9 around 80 × 0.989) yet far above what stray or diffuse samples give by chance, where
the "at least one sample" rule of VEEGAN would count a mode touched by a single outlier.

A mode that has collapsed towards its centre, or holds a tenth of its share, still counts as covered, so `mode_stats`
also reports the total variation between the modes' sample shares and the mixture weights (`weight_tv`) and each
covered mode's *spread ratio*: the per-dimension standard deviation of its high-quality samples
(about their own mean) over what exact samples of the component give under the same n_std cut,
s_k · c(n_std, D), where c² = E[χ²_D | χ²_D ≤ n_std²] / D = P(χ²_{D+2} ≤ n_std²) / P(χ²_D ≤ n_std²)
(c = 0.974 at D = 2, n_std = 3). Exact samples give 1 (±0.07 with 100 samples a mode); a mode drawn at half its
width gives 0.5; the cut caps an over-wide mode's ratio (a uniform disc of radius n_std · s_k gives 1.54).

Distribution-level metrics: `gaussian_fd` (Fréchet distance of Gaussian fits, the FID formula on raw
coordinates), `mmd` (unbiased MMD² with a mixture of RBF kernels, Gretton et al. 2012) and `mode_mmd` (MMD² with
one RBF kernel of the mixture's mode width, which sees a mode drawn narrower or wider than the data's).

Reference point: for exact samples of an isotropic 2-D Gaussian the share within 3 std is
1 − exp(−9/2) = 98.89 %, so ~98.9 % is the ceiling for `high_quality_share` at n_std = 3.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from fastdiff.data.toy import GaussianMixture
from fastdiff.metrics.frechet import feature_fd

# RBF bandwidths of `mmd`: from below the grid25 / ring8 mode width (0.0177 / 0.0141) to the data scale (~1).
MMD_BANDWIDTHS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass
class ModeStats:
    """Result of `mode_stats`.

    modes_covered: modes with counts[k] ≥ min_counts[k]; n_modes: K; high_quality_share: share of all samples
    within n_std std of their nearest centre; counts: [K] high-quality samples per mode; min_counts: [K] the
    coverage thresholds; n_samples, n_std, min_share: the inputs; nonfinite: samples with NaN or inf;
    spread: [K] each covered mode's spread ratio (see the module docstring; NaN for a mode not covered or with
    fewer than 2 high-quality samples); weight_tv: total variation ½ Σ_k |counts_k / Σ counts − w_k| between the
    high-quality samples' shares of the modes and the mixture weights (0: balanced; exact samples give ~0.04 at
    n = 2500 on the 25-grid; NaN without high-quality samples).
    """

    modes_covered: int
    n_modes: int
    high_quality_share: float
    counts: list[int]
    min_counts: list[int]
    n_samples: int
    n_std: float
    min_share: float
    nonfinite: int = 0
    spread: list[float] = field(default_factory=list)
    weight_tv: float = math.nan

    @property
    def mean_spread(self) -> float:
        """Mean spread ratio over the covered modes (NaN when none is covered)."""
        r = [v for v in self.spread if math.isfinite(v)]
        return sum(r) / len(r) if r else math.nan

    @property
    def worst_spread(self) -> float:
        """The covered mode's spread ratio farthest from 1 in log ratio (0.5 and 2 are equally bad; NaN when none
        is covered)."""
        r = [v for v in self.spread if math.isfinite(v)]
        return max(r, key=lambda v: abs(math.log(v)) if v > 0 else math.inf) if r else math.nan

    @property
    def all_covered(self) -> bool:
        """True when every mode is covered."""
        return self.modes_covered == self.n_modes

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of every field."""
        return asdict(self)


def nearest_mode(samples: torch.Tensor, mixture: GaussianMixture):
    """Index [N] (int64) of the nearest centre and the distance to it [N] (float64), Euclidean.

    samples: [N, D]. Non-finite samples get distance inf (index 0).
    """
    if samples.dim() != 2 or samples.shape[1] != mixture.dim:
        raise ValueError(f"samples must have shape [N, D] = [N, {mixture.dim}], got {tuple(samples.shape)}")
    x = samples.detach().to(device="cpu", dtype=torch.float64)
    finite = torch.isfinite(x).all(1)
    x = torch.where(finite[:, None], x, torch.zeros_like(x))
    dist = torch.cdist(x, mixture.means)                                   # [N, K]
    d, idx = dist.min(1) if x.shape[0] else (dist.new_zeros(0), torch.zeros(0, dtype=torch.int64))
    d = torch.where(finite, d, torch.full_like(d, math.inf))
    return idx, d


def mode_stats(samples: torch.Tensor, mixture: GaussianMixture, n_std: float = 3.0,
               min_share: float = 0.1) -> ModeStats:
    """Modes covered and share of high-quality samples of `samples`: [N, D] against `mixture`.

    See the module docstring for the definitions; n_std > 0, 0 ≤ min_share ≤ 1.
    """
    if not n_std > 0:
        raise ValueError(f"n_std must be > 0, got {n_std}")
    if not 0.0 <= min_share <= 1.0:
        raise ValueError(f"min_share must lie in [0, 1], got {min_share}")
    idx, d = nearest_mode(samples, mixture)
    n = samples.shape[0]
    good = d <= n_std * mixture.std[idx]                                   # inf never passes
    counts = torch.bincount(idx[good], minlength=mixture.n_components)
    min_counts = torch.clamp(torch.ceil(min_share * n * mixture.weights - 1e-9), min=1).to(torch.int64)
    return ModeStats(
        modes_covered=int((counts >= min_counts).sum()),
        n_modes=mixture.n_components,
        high_quality_share=float(good.sum()) / n if n else 0.0,
        counts=[int(c) for c in counts],
        min_counts=[int(c) for c in min_counts],
        n_samples=n,
        n_std=float(n_std),
        min_share=float(min_share),
        nonfinite=int((~torch.isfinite(d)).sum()),
        spread=_spread_ratios(samples, idx, good, counts >= min_counts, mixture, n_std),
        weight_tv=float(0.5 * (counts / counts.sum() - mixture.weights).abs().sum()) if good.any() else math.nan,
    )


def truncated_std_factor(n_std: float, dim: int) -> float:
    """c(n_std, D): the per-dimension std of an isotropic D-dim Gaussian cut to radius n_std·s, over s.
    c² = E[χ²_D | χ²_D ≤ n_std²] / D = P(χ²_{D+2} ≤ n_std²) / P(χ²_D ≤ n_std²)
    (as x·p_{χ²_D}(x) = D·p_{χ²_{D+2}}(x))."""
    x = torch.tensor(0.5 * n_std**2, dtype=torch.float64)
    return math.sqrt(float(torch.special.gammainc(torch.tensor(dim / 2 + 1.0, dtype=torch.float64), x)
                           / torch.special.gammainc(torch.tensor(dim / 2, dtype=torch.float64), x)))


def _spread_ratios(samples, idx, good, covered, mixture: GaussianMixture, n_std: float) -> list[float]:
    """[K] spread ratios: per covered mode, sqrt(Σ‖x − x̄‖² / ((n − 1) D)) of its high-quality samples over
    s_k · c(n_std, D); NaN elsewhere."""
    x = samples.detach().to(device="cpu", dtype=torch.float64)
    c = truncated_std_factor(n_std, mixture.dim)
    out = []
    for k in range(mixture.n_components):
        xk = x[good & (idx == k)]
        if not bool(covered[k]) or xk.shape[0] < 2:
            out.append(math.nan)
            continue
        var = (xk - xk.mean(0)).square().sum() / ((xk.shape[0] - 1) * mixture.dim)
        out.append(float(var.sqrt() / (mixture.std[k] * c)))
    return out


def gaussian_fd(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits of samples: [N, D] and reference: [M, D] (N, M >= 2), float64."""
    return feature_fd(samples, reference)


def _rbf_mixture(a: torch.Tensor, b: torch.Tensor, bandwidths: torch.Tensor) -> torch.Tensor:
    """k(a_i, b_j) = Σ_σ exp(−‖a_i − b_j‖² / (2σ²)), [A, B] for a: [A, D], b: [B, D]."""
    sq = torch.cdist(a, b).square()
    return torch.exp(-sq[None] / (2.0 * bandwidths.square()[:, None, None])).sum(0)


def _offdiag_mean(k: torch.Tensor) -> torch.Tensor:
    """Mean of the off-diagonal entries of a square [n, n] kernel matrix (n >= 2)."""
    n = k.shape[0]
    return (k.sum() - k.diagonal().sum()) / (n * (n - 1))


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths=MMD_BANDWIDTHS) -> float:
    """Unbiased squared MMD between samples x: [N, D] and y: [M, D] (Gretton et al. 2012, eq. 3):
    mean_{i≠i'} k(x_i, x_i') + mean_{j≠j'} k(y_j, y_j') − 2 mean_{i,j} k(x_i, y_j), k the sum of RBF kernels
    over `bandwidths` (σ > 0). Float64; O((N + M)² · len(bandwidths)) memory. Can be slightly negative when the
    distributions agree."""
    xs, ys = (torch.as_tensor(v).detach().to(device="cpu", dtype=torch.float64) for v in (x, y))
    for name, v in (("x", xs), ("y", ys)):
        if v.dim() != 2 or v.shape[0] < 2:
            raise ValueError(f"{name} must have shape [N, D] with N >= 2, got {tuple(v.shape)}")
        if not torch.isfinite(v).all():
            raise ValueError(f"{name} must be finite")
    if xs.shape[1] != ys.shape[1]:
        raise ValueError(f"x and y must have one dimension D, got {xs.shape[1]} and {ys.shape[1]}")
    bw = torch.as_tensor(bandwidths, dtype=torch.float64).reshape(-1)
    if bw.numel() == 0 or not bool((bw > 0).all()):
        raise ValueError(f"bandwidths must be a non-empty sequence of positive numbers, got {bandwidths!r}")
    kxx, kyy = _offdiag_mean(_rbf_mixture(xs, xs, bw)), _offdiag_mean(_rbf_mixture(ys, ys, bw))
    return float(kxx + kyy - 2.0 * _rbf_mixture(xs, ys, bw).mean())


def mode_mmd(x: torch.Tensor, y: torch.Tensor, mixture: GaussianMixture) -> float:
    """`mmd` of x: [N, D] and y: [M, D] with one RBF kernel whose bandwidth is the mixture's mean mode std: at
    the scale of a mode's width (where `mmd`'s bandwidths, on data rescaled to unit extent, are dominated by the
    layout of the modes), so it sees modes drawn narrower or wider than the data's."""
    return mmd(x, y, bandwidths=(float(mixture.std.mean()),))
