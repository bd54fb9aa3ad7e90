"""create_gaussian_diffusion against guided-diffusion's own (guided-diffusion-sdk, dev extra)."""
import warnings

import numpy as np
import pytest

from fastdiff.diffusion import create_gaussian_diffusion

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    gd_script_util = pytest.importorskip("guided_diffusion.script_util")


@pytest.mark.parametrize("learn_sigma,use_kl,rescale,schedule,respacing,predict_xstart", [
    (False, False, False, "linear", "", False),
    (True, False, True, "cosine", "", False),
    (True, True, False, "cosine", "ddim25", False),
    (False, False, False, "linear", "10,5", True),
])
def test_matches_guided_diffusion(learn_sigma, use_kl, rescale, schedule, respacing, predict_xstart):
    kw = dict(steps=200, learn_sigma=learn_sigma, sigma_small=False, noise_schedule=schedule, use_kl=use_kl,
              predict_xstart=predict_xstart, rescale_timesteps=False, rescale_learned_sigmas=rescale,
              timestep_respacing=respacing)
    ours, theirs = create_gaussian_diffusion(**kw), gd_script_util.create_gaussian_diffusion(**kw)
    assert ours.num_timesteps == theirs.num_timesteps
    assert ours.timestep_map == list(theirs.timestep_map)
    np.testing.assert_allclose(ours.betas, theirs.betas, rtol=1e-12, atol=0)
    for attr in ("loss_type", "model_var_type", "model_mean_type"):
        assert getattr(ours, attr).name == getattr(theirs, attr).name, attr


def test_sigma_small_and_bad_schedule():
    assert create_gaussian_diffusion(steps=100, sigma_small=True).model_var_type.name == "FIXED_SMALL"
    with pytest.raises(ValueError, match="schedule_name"):
        create_gaussian_diffusion(steps=10, noise_schedule="quadratic")
