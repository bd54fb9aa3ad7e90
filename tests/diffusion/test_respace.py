import numpy as np
import pytest
import torch
from _diffusion_testlib import images, model_for

from fastdiff.diffusion import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    SpacedDiffusion,
    get_named_beta_schedule,
    space_timesteps,
)


def _kwargs(T=100, schedule="linear", var_type=ModelVarType.LEARNED_RANGE, rescale=False):
    return {"betas": get_named_beta_schedule(schedule, T), "model_mean_type": ModelMeanType.EPSILON,
            "model_var_type": var_type, "loss_type": LossType.MSE, "rescale_timesteps": rescale}


def _accumulated(stride, n):
    out, cur = [], 0.0
    for _ in range(n):
        out.append(cur)
        cur += stride
    return out


def test_space_timesteps_known_outputs():
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim1000") == set(range(1000))
    assert space_timesteps(1000, "ddim1") == {0}
    # guided-diffusion's docstring example: 300 steps, sections of 100 strided to 10, 15 and 20 steps
    steps = sorted(space_timesteps(300, [10, 15, 20]))
    assert len(steps) == 45
    assert steps[:10] == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    assert steps[10:25] == [100 + round(c) for c in _accumulated(99 / 14, 15)]
    assert steps[25:] == [200 + round(c) for c in _accumulated(99 / 19, 20)]
    # guided-diffusion accumulates the stride, so 7 · 99/14 = 49.5 arrives as 49.4999… and rounds to 49
    assert steps[17] == 149
    assert space_timesteps(300, "10,15,20") == set(steps)
    # uneven sections: the first T % K sections are one longer
    assert space_timesteps(10, [2, 2, 2]) == {0, 3, 4, 6, 7, 9}
    assert space_timesteps(7, [1]) == {0}


@pytest.mark.parametrize("T", [17, 100, 1000])
def test_space_timesteps_random_counts_stay_in_range(T):
    k = int(torch.randint(1, 4, ()))
    counts = [int(torch.randint(1, T // k + 1, ())) for _ in range(k)]
    steps = space_timesteps(T, counts)
    assert len(steps) == sum(counts)
    assert min(steps) == 0 and max(steps) < T


def test_space_timesteps_errors_name_the_argument():
    with pytest.raises(ValueError, match="section_counts 'ddim20'.*num_timesteps = 10"):
        space_timesteps(10, "ddim20")
    with pytest.raises(ValueError, match="section_counts.*integer stride"):
        space_timesteps(10, "ddim7")
    with pytest.raises(ValueError, match=r"asks for 20 steps, more than num_timesteps = 10"):
        space_timesteps(10, [20])
    with pytest.raises(ValueError, match="cannot divide section 0 of 100 steps into 110"):
        space_timesteps(300, [110, 10, 10])
    with pytest.raises(ValueError, match="section_counts"):
        space_timesteps(100, "ten")
    with pytest.raises(ValueError, match="num_timesteps"):
        space_timesteps(0, [1])


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_spaced_alphas_cumprod_equal_base_at_kept_steps(schedule):
    T = 200
    use = space_timesteps(T, "ddim25") | space_timesteps(T, [3, 7])
    base = GaussianDiffusion(**_kwargs(T, schedule))
    spaced = SpacedDiffusion(use, **_kwargs(T, schedule))
    assert spaced.timestep_map == sorted(use)
    assert spaced.num_timesteps == len(use) and spaced.original_num_steps == T
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[sorted(use)], rtol=1e-12)
    np.testing.assert_allclose(spaced.betas[0], base.betas[0], rtol=1e-12)
    full = SpacedDiffusion(range(T), **_kwargs(T, schedule))
    np.testing.assert_allclose(full.betas, base.betas, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("rescale", [False, True])
def test_wrapped_model_maps_timesteps(rescale):
    T = 100
    spaced = SpacedDiffusion(space_timesteps(T, "ddim10"), **_kwargs(T, rescale=rescale))
    seen = []

    def model(x, t):
        seen.append(t)
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    t = torch.tensor([0, 3, 9])
    spaced.p_mean_variance(model, torch.randn(3, 2, 4), t)
    expected = torch.tensor([0, 30, 90])
    torch.testing.assert_close(seen[0], expected.float() * (1000.0 / T) if rescale else expected)
    spaced.training_losses(model, torch.randn(3, 2, 4), t)
    torch.testing.assert_close(seen[1], seen[0])
    spaced.condition_mean(lambda x, t_: seen.append(t_) or torch.zeros_like(x),
                          {"mean": torch.zeros(3, 2, 4), "variance": torch.ones(3, 2, 4)}, torch.randn(3, 2, 4), t)
    torch.testing.assert_close(seen[2], seen[0])


def test_learned_range_variance_after_respacing():
    """v = +1 gives the respaced β_t, v = -1 the respaced clipped β̃_t, not the base process's."""
    T = 100
    spaced = SpacedDiffusion(space_timesteps(T, "ddim10"), **_kwargs(T))
    x, t = torch.randn(3, 2, 4), torch.tensor([1, 5, 9])
    for v, expected in ((1.0, np.log(spaced.betas)), (-1.0, spaced.posterior_log_variance_clipped)):
        def model(x_, t_, v=v):
            return torch.cat([torch.zeros_like(x_), torch.full_like(x_, v)], 1)
        out = spaced.p_mean_variance(model, x, t)
        torch.testing.assert_close(out["log_variance"][:, 0, 0].double(), torch.as_tensor(expected[t.numpy()]),
                                   rtol=1e-5, atol=1e-6)
    base = GaussianDiffusion(**_kwargs(T))
    assert not np.allclose(np.log(spaced.betas[1:]), base.log_betas[spaced.timestep_map[1:]])


def test_spaced_training_losses_and_bpd_run():
    T = 100
    spaced = SpacedDiffusion(space_timesteps(T, [4, 4]), **_kwargs(T, "cosine"))
    model = model_for(spaced)
    x0 = images(2, 3, 4, 4)
    terms = spaced.training_losses(model, x0, torch.tensor([0, 7]))
    assert set(terms) == {"loss", "mse", "vb"} and torch.isfinite(terms["loss"]).all()
    bpd = spaced.calc_bpd_loop(model, x0)
    assert bpd["vb"].shape == (2, 8) and (bpd["total_bpd"] > 0).all()
    assert sorted({int(t[0]) for t in model.seen_t}) == spaced.timestep_map


def test_spaced_diffusion_errors():
    with pytest.raises(ValueError, match="use_timesteps"):
        SpacedDiffusion([5, 100], **_kwargs(100))
    with pytest.raises(ValueError, match="use_timesteps"):
        SpacedDiffusion([], **_kwargs(100))
