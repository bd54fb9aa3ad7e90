"""bits_per_dim against a hand-computed bound: a T = 1 diffusion whose model output is chosen.

With T = 1 the bound is L_T + L_0. The model is START_X with LEARNED variance: it returns x̂_0 = x_0 + d and
log σ² (both chosen), so with ᾱ_prev = 1 the decoder mean is x̂_0 clipped to [-1, 1] (posterior coefficients
1 and 0) and its variance σ². Then per pixel, with Φ the exact normal CDF and μ = clip(x_0 + d):
    L_0 = −log[Φ((x−μ+1/255)/σ) − Φ((x−μ−1/255)/σ)]  (x = ±1 take the open-ended edge bins)
    L_T = KL(N(√ᾱ x_0, 1−ᾱ) ‖ N(0, 1)) = ½(−1 − log(1−ᾱ) + (1−ᾱ) + ᾱ x_0²),
averaged over dimensions and divided by ln 2. fastdiff uses the tanh approximation of Φ (as guided-diffusion),
whose error here is below 5e-3 bits/dim (measured 3e-3 where
x̂_0 is off by up to ~3σ).
"""
import math

import numpy as np
import pytest
import torch

from fastdiff.data import ArrayDataset
from fastdiff.diffusion import GaussianDiffusion, LossType, ModelMeanType, ModelVarType
from fastdiff.metrics import bits_per_dim

BETA = 0.3
SIGMA = 1.5 / 255


def _diffusion():
    return GaussianDiffusion(betas=np.array([BETA]), model_mean_type=ModelMeanType.START_X,
                             model_var_type=ModelVarType.LEARNED, loss_type=LossType.MSE)


def _model(x_t, t, x0, d):
    """The chosen output: mean channels x0 + d, variance channels log σ²."""
    assert int(t.max()) == 0 and t.shape == (x_t.shape[0],)
    return torch.cat([x0 + d, torch.full_like(x0, 2 * math.log(SIGMA))], dim=1)


def _hand_bpd(x0: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Per-sample total bits/dim [N] by the module docstring's formulas (float64, exact Φ)."""
    x, mu = x0.double(), (x0 + d).double().clamp(-1, 1)
    phi = torch.special.ndtr
    plus, minus = phi((x - mu + 1 / 255) / SIGMA), phi((x - mu - 1 / 255) / SIGMA)
    lik = torch.where(x < -0.999, plus, torch.where(x > 0.999, 1 - minus, plus - minus))
    decoder = -lik.log()
    ab = 1 - BETA
    prior = 0.5 * (-1 - math.log(1 - ab) + (1 - ab) + ab * x.square())
    return (decoder + prior).flatten(1).mean(1) / math.log(2)


def _data(seed, n=10):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 256, (n, 3, 4, 4), generator=g).float() / 127.5 - 1
    x0[:, 0, 0, :3] = torch.tensor([-1.0, 1.0, 1.0])                  # both edge bins in every sample
    d = torch.randn(n, 3, 4, 4, generator=g) / 255
    d[:, 0, 0, 2] = 0.05                                               # x̂_0 = 1.05 is clipped back to 1
    return x0, d


def test_bits_per_dim_matches_hand_computation():
    x0, d = _data(0)
    torch.manual_seed(0)
    out = bits_per_dim(_diffusion(), _model, x0, batch_size=4, progress=False,
                       model_kwargs_fn=lambda idx: {"x0": x0[idx], "d": d[idx]})
    per_sample = _hand_bpd(x0, d)
    assert out["n"] == 10
    assert out["bpd"] == pytest.approx(float(per_sample.mean()), abs=5e-3)
    assert out["stderr"] == pytest.approx(float(per_sample.std()) / math.sqrt(10), rel=0.05, abs=1e-4)
    assert out["stderr"] > 0


def test_bits_per_dim_detects_wrong_mean_and_accepts_dataset():
    x0, d = _data(1, n=6)
    good = bits_per_dim(_diffusion(), _model, ArrayDataset(x=x0), batch_size=6, progress=False,
                        model_kwargs_fn=lambda idx: {"x0": x0[idx], "d": d[idx]})
    worse = bits_per_dim(_diffusion(), _model, x0, batch_size=5, progress=False,
                         model_kwargs_fn=lambda idx: {"x0": x0[idx], "d": 2 * d[idx]})
    assert worse["bpd"] == pytest.approx(float(_hand_bpd(x0, 2 * d).mean()), abs=5e-3)
    assert worse["bpd"] > good["bpd"] + 0.1


def test_bits_per_dim_errors():
    x0, _ = _data(2, n=2)
    with pytest.raises(ValueError, match="batch_size"):
        bits_per_dim(_diffusion(), _model, x0, batch_size=0, progress=False)
    with pytest.raises(TypeError, match="data"):
        bits_per_dim(_diffusion(), _model, [1.0, 2.0], progress=False)
    with pytest.raises(ValueError, match="empty"):
        bits_per_dim(_diffusion(), _model, x0[:0], progress=False)
