import math

import numpy as np
import pytest

from fastdiff.diffusion import betas_for_alpha_bar, create_gaussian_diffusion, get_named_beta_schedule


@pytest.mark.parametrize("T", [50, 1000, 4000])
def test_linear_endpoints_scale_with_T(T):
    b = get_named_beta_schedule("linear", T)
    assert b.dtype == np.float64 and b.shape == (T,)
    assert b[0] == pytest.approx(1e-4 * 1000 / T, rel=1e-12)
    assert b[-1] == pytest.approx(0.02 * 1000 / T, rel=1e-12)
    np.testing.assert_allclose(np.diff(b), (b[-1] - b[0]) / (T - 1), rtol=1e-9)


@pytest.mark.parametrize("T", [7, 100, 1000])
def test_cosine_matches_alpha_bar_formula(T):
    b = get_named_beta_schedule("cosine", T)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
    ab = np.cumprod(1.0 - b)
    expected = np.array([f(i + 1) / f(0) for i in range(T)])
    # every step but the last (clipped) one reproduces ᾱ(t)/ᾱ(0) of Improved DDPM eq. 17
    np.testing.assert_allclose(ab[:-1], expected[:-1], rtol=1e-9, atol=1e-12)
    assert b[-1] == 0.999 and (b <= 0.999).all() and (b > 0).all()


def test_betas_for_alpha_bar_clips_at_max_beta(rng):
    k = rng.uniform(1.0, 3.0)
    b = betas_for_alpha_bar(20, lambda t: (1 - t) ** k, max_beta=0.5)
    raw = np.array([1 - ((1 - (i + 1) / 20) / (1 - i / 20)) ** k for i in range(20)])
    np.testing.assert_allclose(b, np.minimum(raw, 0.5), rtol=1e-12)
    assert b.max() == 0.5


def test_schedule_errors_name_the_argument():
    with pytest.raises(ValueError, match="schedule_name"):
        get_named_beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="num_diffusion_timesteps"):
        get_named_beta_schedule("linear", 0)
    with pytest.raises(ValueError, match="num_diffusion_timesteps"):
        get_named_beta_schedule("cosine", -3)
    with pytest.raises(TypeError, match="num_diffusion_timesteps"):
        get_named_beta_schedule("cosine", 2.5)


@pytest.mark.parametrize("T", [1, 10, 20])
def test_short_linear_schedules_are_refused_naming_the_argument(T):
    """β_T = 0.02·1000/T ≥ 1 for T ≤ 20 would make ᾱ_T = 0 and every sampler return NaN."""
    with pytest.raises(ValueError, match=f"num_diffusion_timesteps must be > 20 .* got {T}"):
        get_named_beta_schedule("linear", T)
    with pytest.raises(ValueError, match=f"steps must be > 20 .* got {T}"):
        create_gaussian_diffusion(steps=T)
    assert np.isfinite(np.log(np.cumprod(1 - get_named_beta_schedule("linear", 21)))).all()
    assert np.isfinite(np.log(np.cumprod(1 - get_named_beta_schedule("cosine", T)))).all()
