"""Sampler loops: exact timestep lists, stored expected values for fixed seeds, backend agreement, and mode
coverage of the 25-Gaussian grid with its exact ε-predictor."""
import numpy as np
import pytest
import torch

import fastdiff.ops as ops
from fastdiff import samplers
from fastdiff.data.toy import grid25
from fastdiff.metrics.toy2d import mode_stats
from fastdiff.samplers._loop import prepare_timesteps

BETAS = np.linspace(1e-4, 0.02, 1000)
AC = np.cumprod(1 - BETAS)


class LinearModel:
    """A fixed, cheap ε-model (ε̂ = a(t)·x + b) so loops can be checked against stored values."""

    def __call__(self, x, t, scale=1.0):
        return scale * (0.5 + 0.3 * torch.cos(t.float() / 100)).view(-1, *[1] * (x.dim() - 1)) * x + 0.01


def test_timesteps_are_visited_in_descending_order_exactly():
    seen = []
    x = torch.zeros(2, 1, 3)
    samplers.sample_ddim(lambda x, t: (seen.append(t.tolist()), torch.zeros_like(x))[1], x, range(0, 1000, 20),
                         alphas_cumprod=AC, disable=True)
    assert seen == [[t, t] for t in range(980, -1, -20)]
    seen.clear()
    samplers.sample_ddpm(lambda x, t: (seen.append(int(t[0])), torch.zeros_like(x))[1], x, [5, 0, 999, 500],
                         alphas_cumprod=AC, seed=0, disable=True)
    assert seen == [999, 500, 5, 0]


def test_respaced_table_matches_guided_diffusion_respacing():
    ts = list(range(0, 1000, 100))
    table, rows, model_t, host_t = prepare_timesteps(ts, AC, torch.zeros(3, 1))
    np.testing.assert_allclose(table[:, ops.table.AC].double().numpy(), AC[ts], rtol=1e-6)
    np.testing.assert_allclose(table[1:, ops.table.AC_PREV].double().numpy(), AC[ts[:-1]], rtol=1e-6)
    assert rows.shape == (10, 3) and model_t[:, 0].tolist() == ts
    assert host_t == ts


# Stored expected values (sum, mean of the final sample) for fixed seeds, as diffusers' scheduler tests do.
# Recorded with the reference backend; every backend must reproduce them.
EXPECTED = {
    "ddim50_eta0": (390.3042297363281, 1.0164172649383545),
    "ddim10_eta1": (-12.564720153808594, -0.03272062540054321),
    "ddpm100_fixed_large": (-18.543569564819336, -0.048290546983480453),
}


def _run(kind, backend):
    x = ops.randn_like(torch.empty(2, 3, 8, 8), seed=2024, offset=0)
    model = LinearModel()
    if kind == "ddim50_eta0":
        return samplers.sample_ddim(model, x, range(0, 1000, 20), alphas_cumprod=AC, disable=True, backend=backend)
    if kind == "ddim10_eta1":
        return samplers.sample_ddim(model, x, range(0, 1000, 100), alphas_cumprod=AC, eta=1.0, seed=7,
                                    clip_denoised=True, disable=True, backend=backend)
    return samplers.sample_ddpm(model, x, range(0, 1000, 10), alphas_cumprod=AC, var_type="fixed_large", seed=7,
                                guidance_scale=3.0, uncond_args={"scale": 0.5}, disable=True, backend=backend)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_sampler_stored_values(kind, backend):
    out = _run(kind, backend)
    total, mean = EXPECTED[kind]
    assert float(out.sum()) == pytest.approx(total, rel=1e-4, abs=1e-3)
    assert float(out.mean()) == pytest.approx(mean, rel=1e-4, abs=1e-5)


def test_callback_and_progressive_generator_agree():
    x = ops.randn_like(torch.empty(2, 3, 4), seed=1)
    infos = []
    final = samplers.sample_ddim(LinearModel(), x, range(0, 1000, 100), alphas_cumprod=AC, eta=0.5, seed=3,
                                 callback=infos.append, disable=True)
    steps = list(samplers.ddim_steps(LinearModel(), x, range(0, 1000, 100), alphas_cumprod=AC, eta=0.5, seed=3,
                                     disable=True))
    assert [i["i"] for i in infos] == list(range(10)) and len(steps) == 10
    assert torch.equal(steps[-1]["x"], final) and torch.equal(infos[-1]["x"], final)
    assert infos[-1]["denoised"].shape == x.shape


def test_generator_noise_is_reproducible():
    x = torch.randn(3, 2, 5)
    a = samplers.sample_ddpm(LinearModel(), x, range(0, 1000, 50), alphas_cumprod=AC,
                             generator=torch.Generator().manual_seed(5), disable=True)
    b = samplers.sample_ddpm(LinearModel(), x, range(0, 1000, 50), alphas_cumprod=AC,
                             generator=torch.Generator().manual_seed(5), disable=True)
    c = samplers.sample_ddpm(LinearModel(), x, range(0, 1000, 50), alphas_cumprod=AC,
                             generator=torch.Generator().manual_seed(6), disable=True)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_seeded_samples_independent_of_batch_size():
    x = ops.randn_like(torch.empty(6, 2), seed=9)
    full = samplers.sample_ddpm(LinearModel(), x, range(0, 1000, 50), alphas_cumprod=AC, seed=9, disable=True)
    part = samplers.sample_ddpm(LinearModel(), x[:2], range(0, 1000, 50), alphas_cumprod=AC, seed=9, disable=True)
    torch.testing.assert_close(full[:2], part)


def test_sampler_errors():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        samplers.sample_ddim(LinearModel(), x, range(10), alphas_cumprod=None, disable=True)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        samplers.sample_ddim(LinearModel(), x, range(10), alphas_cumprod=AC, eta=-1, disable=True)
    with pytest.raises(ValueError, match="uncond_args"):
        samplers.sample_ddim(LinearModel(), x, range(10), alphas_cumprod=AC, guidance_scale=2.0, disable=True)
    with pytest.raises(ValueError, match="timesteps must lie in"):
        samplers.sample_ddpm(LinearModel(), x, range(990, 1010), alphas_cumprod=AC, disable=True)


@pytest.mark.parametrize("kind", ["ddpm1000", "ddim50"])
def test_exact_model_covers_all_25_modes(kind):
    mixture = grid25()
    model = mixture.eps_model(AC)
    x = ops.randn_like(torch.empty(1000, 2), seed=11)
    if kind == "ddpm1000":
        out = samplers.sample_ddpm(model, x, None, alphas_cumprod=AC, seed=12, disable=True)
    else:
        out = samplers.sample_ddim(model, x, range(0, 1000, 20), alphas_cumprod=AC, disable=True)
    stats = mode_stats(out, mixture)
    assert stats.modes_covered == 25, stats
    assert stats.high_quality_share >= 0.95, stats
