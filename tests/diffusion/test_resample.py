import numpy as np
import pytest
import torch
import torch.distributed as dist
from _diffusion_testlib import make_diffusion

from fastdiff.diffusion import LossSecondMomentResampler, UniformSampler, create_named_schedule_sampler


def test_named_samplers_and_uniform_weights():
    d = make_diffusion(T=17)
    uniform = create_named_schedule_sampler("uniform", d)
    assert isinstance(uniform, UniformSampler)
    assert isinstance(create_named_schedule_sampler("loss-second-moment", d), LossSecondMomentResampler)
    t, w = uniform.sample(64, "cpu")
    assert t.dtype == torch.int64 and t.shape == (64,) and t.min() >= 0 and t.max() < 17
    torch.testing.assert_close(w, torch.ones(64))
    with pytest.raises(ValueError, match="name"):
        create_named_schedule_sampler("beta", d)


def _warm_up(sampler, T, history):
    losses = np.abs(np.random.normal(size=(T, history + 3))) + 0.1  # numpy's global generator, seeded per test
    for j in range(history + 3):
        sampler.update_with_local_losses(torch.arange(T), torch.as_tensor(losses[:, j]))
    return losses[:, 3:]  # the oldest three per t were shifted out


def test_loss_second_moment_weights_after_warm_up():
    T, history = 9, 10
    d = make_diffusion(T=T)
    sampler = LossSecondMomentResampler(d)
    assert sampler.history_per_term == history and sampler.uniform_prob == 0.001
    np.testing.assert_array_equal(sampler.weights(), np.ones(T))
    sampler.update_with_all_losses(list(range(T - 1)), [1.0] * (T - 1))
    np.testing.assert_array_equal(sampler.weights(), np.ones(T))  # not warmed up until every t is full
    sampler = LossSecondMomentResampler(d)
    kept = _warm_up(sampler, T, history)
    rms = np.sqrt((kept ** 2).mean(1))
    expected = rms / rms.sum() * (1 - 0.001) + 0.001 / T
    np.testing.assert_allclose(sampler.weights(), expected, rtol=1e-12)
    t, w = sampler.sample(50, "cpu")
    p = expected / expected.sum()
    torch.testing.assert_close(w, torch.as_tensor(1 / (T * p[t.numpy()]), dtype=torch.float32))


def test_loss_second_moment_under_single_process_group(tmp_path):
    T = 5
    d = make_diffusion(T=T)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        sampler = LossSecondMomentResampler(d, history_per_term=2)
        kept = _warm_up(sampler, T, 2)
    finally:
        dist.destroy_process_group()
    rms = np.sqrt((kept ** 2).mean(1))
    np.testing.assert_allclose(sampler.weights(), rms / rms.sum() * 0.999 + 0.001 / T, rtol=1e-6)


def test_resampler_argument_errors():
    d = make_diffusion(T=5)
    with pytest.raises(ValueError, match="history_per_term"):
        LossSecondMomentResampler(d, history_per_term=0)
    with pytest.raises(ValueError, match="uniform_prob"):
        LossSecondMomentResampler(d, uniform_prob=1.5)
