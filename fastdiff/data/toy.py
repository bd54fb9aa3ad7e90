"""2-D toy data sets as isotropic Gaussian mixtures, and their exact ε-predictor.

`grid25()` is the 25-Gaussian grid of the mode-coverage experiments of DDGAN (Xiao et al. 2022, §5.3) and
SIDDM (Xu et al. 2023, §5.1), which use the WGAN-GP toy generator (Gulrajani et al. 2017, gan_toy.py):
centres 2·(i, j) for i, j ∈ {−2, …, 2}, standard deviation 0.05, and the whole data set divided by 2.828.
`ring8()` is the 8-Gaussian ring of the same generator (radius 2, std 0.02, divided by 1.414).

Because every forward marginal of a Gaussian mixture is again a Gaussian mixture, the posterior mean
E[x0 | x_t] and so the Bayes-optimal ε-prediction are available in closed form (`x0_posterior_mean`,
`eps_model`): a "perfectly trained" diffusion model to test samplers with.

`toy_dataset(name, n, seed)` wraps grid25, ring8 (component index as label) and the 2-D swiss roll
(`swiss_roll`, unlabelled) as `ArrayDataset`s.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from fastdiff.data.dataset import ArrayDataset, check_positive_int

_ArrayLike = torch.Tensor | float | list | tuple

# The WGAN-GP toy generator's normalisation constants ("dataset /= 2.828  # stdev").
GRID25_SPACING = 2.0
GRID25_STD = 0.05
GRID25_SCALE = 1.0 / 2.828
RING8_RADIUS = 2.0
RING8_STD = 0.02
RING8_SCALE = 1.0 / 1.414


@dataclass
class GaussianMixture:
    """Mixture of isotropic Gaussians Σ_k w_k N(μ_k, s_k² I) in D dimensions.

    means: [K, D]; std: a scalar or [K] (per-component standard deviation s_k > 0); weights: [K] (normalised
    to sum 1; uniform when None). Stored as float64 CPU tensors; `name` labels plots and tables.
    """

    means: _ArrayLike
    std: _ArrayLike = 1.0
    weights: _ArrayLike | None = None
    name: str = "mixture"

    def __post_init__(self) -> None:
        """Convert to float64 tensors and validate shapes and values (messages name the field)."""
        means = torch.as_tensor(self.means, dtype=torch.float64).detach().cpu()
        if means.dim() != 2 or means.shape[0] == 0 or means.shape[1] == 0:
            raise ValueError(f"means must have shape [K, D] with K, D >= 1, got {tuple(means.shape)}")
        if not torch.isfinite(means).all():
            raise ValueError("means must be finite")
        k = means.shape[0]
        std = torch.as_tensor(self.std, dtype=torch.float64).detach().cpu()
        if std.dim() == 0:
            std = std.expand(k).clone()
        if std.shape != (k,):
            raise ValueError(f"std must be a scalar or have shape [K] = [{k}], got {tuple(std.shape)}")
        if not (torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"std must be finite and > 0, got min {float(std.min())}")
        if self.weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        else:
            weights = torch.as_tensor(self.weights, dtype=torch.float64).detach().cpu()
            if weights.shape != (k,):
                raise ValueError(f"weights must have shape [K] = [{k}], got {tuple(weights.shape)}")
            if not (torch.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
                raise ValueError("weights must be finite, non-negative and not all zero")
            weights = weights / weights.sum()
        self.means, self.std, self.weights = means, std, weights

    @property
    def n_components(self) -> int:
        """K, the number of components (modes)."""
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        """D, the data dimension."""
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        """n samples, float32 [n, D] (and int64 [n] component labels when return_labels).

        Draws the component from `weights` and the offset from N(0, s_k² I), both from `generator`
        (a CPU torch.Generator; torch's default generator when None).
        """
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator) if n else \
            torch.zeros(0, dtype=torch.int64)
        noise = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        x = (self.means[labels] + self.std[labels, None] * noise).to(torch.float32)
        return (x, labels) if return_labels else x

    def log_prob(self, x: torch.Tensor, alpha_bar=1.0) -> torch.Tensor:
        """log p_t(x) of the mixture diffused to ᾱ = alpha_bar (1: the data), float64 [N] for x: [N, D]
        (log-sum-exp over components; differentiable in x)."""
        return self.component_log_prob(x, alpha_bar).logsumexp(1)

    def component_log_prob(self, x: torch.Tensor, alpha_bar=1.0) -> torch.Tensor:
        """log w_k + log N(x; √ᾱ μ_k, (ᾱ s_k² + 1 − ᾱ) I), float64 [N, K]: the exact noisy classifier's logits
        when components are classes (softmax = p(k | x_t)). alpha_bar: a float or [N]; differentiable in x."""
        return self._log_joint(x.to(torch.float64), self._alpha_bar(alpha_bar, x))[0]

    def _log_joint(self, x: torch.Tensor, alpha_bar: torch.Tensor):
        """log w_k + log N(x; √ᾱ μ_k, (ᾱ s_k² + 1 − ᾱ) I) as [N, K] and the variances ᾱ s_k² + 1 − ᾱ [N, K].

        x: float64 [N, D]; alpha_bar: float64 [N]. ‖x − √ᾱ μ_k‖² is expanded as ‖x‖² − 2√ᾱ x·μ_k + ᾱ‖μ_k‖²
        (one [N, D] x [D, K] matmul, no [N, K, D] temporary; float64 keeps the cancellation error ~1e-15 ‖x‖²,
        far below the smallest variance ᾱ s_k²).
        """
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [N, D] = [N, {self.dim}], got {tuple(x.shape)}")
        dev = x.device
        mu, s2, w = self.means.to(dev), self.std.to(dev).square(), self.weights.to(dev)
        a = alpha_bar[:, None]                                               # [N, 1]
        var = a * s2[None, :] + (1.0 - a)                                    # [N, K]
        sq = (x.square().sum(1, keepdim=True) - 2.0 * a.sqrt() * (x @ mu.T)
              + a * mu.square().sum(1)[None, :]).clamp_min(0.0)               # [N, K]
        log_joint = w.log()[None] - 0.5 * self.dim * torch.log(2.0 * math.pi * var) - 0.5 * sq / var
        return log_joint, var

    def x0_posterior_mean(self, x: torch.Tensor, alpha_bar) -> torch.Tensor:
        """E[x0 | x_t = x] for x_t = √ᾱ x0 + √(1 − ᾱ) ε (DDPM eq. 4), exactly.

        x_t is the mixture Σ_k w_k N(√ᾱ μ_k, (ᾱ s_k² + 1 − ᾱ) I); with responsibilities r_k(x) (softmax in
        float64 of the log joint, i.e. a log-sum-exp) and gains g_k = √ᾱ s_k² / (ᾱ s_k² + 1 − ᾱ),
        E[x0 | x] = Σ_k r_k [μ_k + g_k (x − √ᾱ μ_k)] = Σ_k r_k (1 − √ᾱ g_k) μ_k + (Σ_k r_k g_k) x.
        x: [N, D]; alpha_bar: a float or a tensor [N] (or [N, 1]) in (0, 1]. Returns [N, D] in x's dtype.
        """
        ab = self._alpha_bar(alpha_bar, x)
        xd = x.to(torch.float64)
        log_joint, var = self._log_joint(xd, ab)
        resp = torch.softmax(log_joint, dim=1)                               # [N, K]
        sa = ab.sqrt()[:, None]                                              # [N, 1]
        gain = sa * self.std.to(x.device).square()[None, :] / var            # [N, K]
        x0 = (resp * (1.0 - sa * gain)) @ self.means.to(x.device) + (resp * gain).sum(1, keepdim=True) * xd
        return x0.to(x.dtype)

    def eps_posterior_mean(self, x: torch.Tensor, alpha_bar) -> torch.Tensor:
        """The Bayes-optimal ε-prediction E[ε | x_t = x] = (x − √ᾱ E[x0 | x]) / √(1 − ᾱ).

        x: [N, D]; alpha_bar: a float or tensor [N] in (0, 1). Computed in float64; returns [N, D] in x's
        dtype.
        """
        ab = self._alpha_bar(alpha_bar, x)
        if not bool((ab < 1.0).all()):
            raise ValueError("alpha_bar must be < 1 for an ε-prediction (ε is undefined without noise)")
        x0 = self.x0_posterior_mean(x.to(torch.float64), ab)
        eps = (x.to(torch.float64) - ab.sqrt()[:, None] * x0) / (1.0 - ab).sqrt()[:, None]
        return eps.to(x.dtype)

    def eps_model(self, alphas_cumprod) -> MixtureEpsModel:
        """The exact ε-predictor `model(x, t)` of this mixture under the schedule ᾱ = alphas_cumprod: [T]."""
        return MixtureEpsModel(self, alphas_cumprod)

    @staticmethod
    def _alpha_bar(alpha_bar, x: torch.Tensor) -> torch.Tensor:
        """ᾱ as a float64 [N] tensor on x's device (broadcast from a scalar, [N] or [N, 1]); checks (0, 1]."""
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64, device=x.device)
        if ab.dim() == 2 and ab.shape[1] == 1:
            ab = ab[:, 0]
        if ab.dim() == 0:
            ab = ab.expand(x.shape[0])
        if ab.shape != (x.shape[0],):
            raise ValueError(f"alpha_bar must be a scalar or have shape [N] = [{x.shape[0]}], "
                             f"got {tuple(ab.shape)}")
        if ab.numel() and not bool(((ab > 0) & (ab <= 1)).all()):
            raise ValueError(f"alpha_bar must lie in (0, 1], got min {float(ab.min())} max {float(ab.max())}")
        return ab


class MixtureEpsModel:
    """Exact ε-predictor of a GaussianMixture: model(x, t) = E[ε | x_t = x] at ᾱ = alphas_cumprod[t].

    The callable the samplers expect (model(x, t) with x: [N, D], t: int64 [N] timesteps). Returns ε̂ in x's
    dtype (float32 for the samplers); the math runs in float64.
    """

    def __init__(self, mixture: GaussianMixture, alphas_cumprod) -> None:
        """mixture: the data distribution; alphas_cumprod: [T] ᾱ_t of the forward process (numpy or torch)."""
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
        if ac.dim() != 1 or ac.numel() == 0:
            raise ValueError(f"alphas_cumprod must be a non-empty 1-D array, got shape {tuple(ac.shape)}")
        if not bool(((ac > 0) & (ac < 1)).all()):
            raise ValueError("alphas_cumprod must lie in (0, 1)")
        self.mixture = mixture
        self.alphas_cumprod = ac

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        """ε̂ for x: [N, D] at timesteps t: int64 [N] (or an int); returns [N, D] in x's dtype."""
        t = torch.as_tensor(t, dtype=torch.int64, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.alphas_cumprod.numel()):
            raise IndexError(f"t must lie in [0, {self.alphas_cumprod.numel()}), got min {int(t.min())} "
                             f"max {int(t.max())}")
        ab = self.alphas_cumprod.to(x.device)[t]
        return self.mixture.eps_posterior_mean(x, ab)


def grid25(spacing: float = GRID25_SPACING, std: float = GRID25_STD,
           scale: float = GRID25_SCALE) -> GaussianMixture:
    """The 25-Gaussian grid of DDGAN / SIDDM (WGAN-GP's '25gaussians'), equal weights.

    Centres spacing·(i, j), i, j ∈ {−2, …, 2}, std `std`, everything multiplied by `scale` (1/2.828): centres
    at {−1.414, −0.707, 0, 0.707, 1.414}², std 0.0177. Component k = 5·(i + 2) + (j + 2).
    """
    r = torch.arange(-2, 3, dtype=torch.float64)
    gi, gj = torch.meshgrid(r, r, indexing="ij")
    means = torch.stack([gi.reshape(-1), gj.reshape(-1)], dim=1) * spacing * scale
    return GaussianMixture(means=means, std=std * scale, name="grid25")


def ring8(radius: float = RING8_RADIUS, std: float = RING8_STD,
          scale: float = RING8_SCALE) -> GaussianMixture:
    """8 equal-weight Gaussians on a ring (WGAN-GP's '8gaussians'): radius·scale = 1.414, std 0.0141."""
    ang = torch.arange(8, dtype=torch.float64) * (2.0 * math.pi / 8.0)
    means = torch.stack([ang.cos(), ang.sin()], dim=1) * radius * scale
    return GaussianMixture(means=means, std=std * scale, name="ring8")


# Swiss roll: t ~ U[1.5π, 4.5π] and (x, z) = (t cos t, t sin t) + N(0, noise² I), as
# sklearn.datasets.make_swiss_roll's (X[:, 0], X[:, 2]) projection; noise 0.5 in those units.
SWISS_ROLL_T_RANGE = (1.5 * math.pi, 4.5 * math.pi)
SWISS_ROLL_NOISE = 0.5


@functools.cache
def _swiss_roll_moments(noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [2] and std [2] of (t cos t, t sin t) + N(0, noise² I), t ~ U(SWISS_ROLL_T_RANGE), float64.

    E[f(t)] by composite Simpson quadrature on 20001 nodes (error ~1e-14 for these smooth integrands).
    """
    lo, hi = SWISS_ROLL_T_RANGE
    m = 20001
    t = torch.linspace(lo, hi, m, dtype=torch.float64)
    w = torch.ones(m, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    w = w / w.sum()                                                        # Simpson weights of the mean
    curve = torch.stack([t * t.cos(), t * t.sin()], dim=1)                 # [m, 2]
    mean = (w[:, None] * curve).sum(0)
    var = (w[:, None] * (curve - mean).square()).sum(0) + noise ** 2
    return mean, var.sqrt()


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = SWISS_ROLL_NOISE) -> torch.Tensor:
    """n points of the 2-D swiss roll, float32 [n, 2], standardised to mean 0 and std 1 per coordinate.

    The raw roll is (t cos t, t sin t) + noise·ε with t ~ U[1.5π, 4.5π] (make_swiss_roll's (x, z) projection);
    the exact mean and std of that distribution (`_swiss_roll_moments`) standardise it, so the scale does not
    depend on the sample. Draws t then ε from `generator`.
    """
    if int(n) < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    lo, hi = SWISS_ROLL_T_RANGE
    t = lo + (hi - lo) * torch.rand(int(n), dtype=torch.float64, generator=generator)
    eps = torch.randn(int(n), 2, dtype=torch.float64, generator=generator)
    raw = torch.stack([t * t.cos(), t * t.sin()], dim=1) + noise * eps
    mean, std = _swiss_roll_moments(float(noise))
    return ((raw - mean) / std).to(torch.float32)


TOY_DATASETS = ("grid25", "ring8", "swiss_roll")


def toy_dataset(name: str, n: int = 10000, seed: int = 0) -> ArrayDataset:
    """A 2-D toy data set of n points, x: float32 [n, 2], deterministic in seed.

    "grid25" / "ring8": samples of `grid25()` / `ring8()` labelled with their component index (25 / 8
    classes); "swiss_roll": `swiss_roll(n)`, unlabelled.
    """
    n = check_positive_int("n", n)
    g = torch.Generator().manual_seed(int(seed))
    if name == "swiss_roll":
        return ArrayDataset(x=swiss_roll(n, generator=g), name="swiss_roll")
    if name not in ("grid25", "ring8"):
        raise ValueError(f"name must be one of {TOY_DATASETS}, got {name!r}")
    mixture = grid25() if name == "grid25" else ring8()
    x, y = mixture.sample(n, generator=g, return_labels=True)
    return ArrayDataset(x=x, y=y, num_classes=mixture.n_components, name=name)
