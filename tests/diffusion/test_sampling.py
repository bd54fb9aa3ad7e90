import pytest
import torch
from _diffusion_testlib import closed_form, col, make_diffusion, model_for

import fastdiff.samplers
from fastdiff.diffusion import (
    LossType,
    ModelMeanType,
    ModelVarType,
    SpacedDiffusion,
    get_named_beta_schedule,
    space_timesteps,
)

SHAPE = (2, 3, 4, 4)
FUSABLE = [ModelMeanType.EPSILON, ModelMeanType.START_X, ModelMeanType.V]


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of fastdiff.samplers.ddpm_steps / ddim_steps made by the loops."""
    calls = []
    for name in ("ddpm_steps", "ddim_steps"):
        real = getattr(fastdiff.samplers, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)
        monkeypatch.setattr(fastdiff.samplers, name, spy)
    return calls


def _loop(d, kind, model, **kw):
    if kind == "ddpm":
        return d.p_sample_loop(model, SHAPE, **kw)
    return d.ddim_sample_loop(model, SHAPE, eta=0.7, **kw)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize("mean_type", FUSABLE)
@pytest.mark.parametrize("var_type", list(ModelVarType))
def test_fused_loop_equals_per_step_loop_for_same_torch_seed(kind, mean_type, var_type, fused_calls):
    d = make_diffusion(mean_type, var_type, T=15)
    model = model_for(d)
    noise = torch.randn(SHAPE)
    seed = int(torch.randint(0, 2**31, ()))
    torch.manual_seed(seed)
    fused = _loop(d, kind, model, noise=noise)
    assert fused_calls == [f"{kind}_steps"]
    torch.manual_seed(seed)
    per_step = _loop(d, kind, model, noise=noise, use_fused=False)
    torch.manual_seed(seed)
    python = _loop(d, kind, model, noise=noise, denoised_fn=lambda x0: x0)  # guided-diffusion's Python math
    assert fused_calls == [f"{kind}_steps"]
    assert torch.isfinite(fused).all() and (fused - noise).abs().max() > 1e-2
    torch.testing.assert_close(fused, per_step, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused, python, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_seeded_philox_stream_same_on_every_path(kind):
    d = make_diffusion(ModelMeanType.EPSILON, ModelVarType.LEARNED_RANGE, T=12)
    model = model_for(d)
    seed = int(torch.randint(0, 2**40, ()))
    fused = _loop(d, kind, model, seed=seed)
    per_step = _loop(d, kind, model, seed=seed, use_fused=False)
    python = _loop(d, kind, model, seed=seed, denoised_fn=lambda x0: x0)
    torch.testing.assert_close(fused, per_step, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused, python, rtol=1e-5, atol=1e-5)
    other = _loop(d, kind, model, seed=seed + 1)
    assert (other - fused).abs().max() > 1e-3
    torch.manual_seed(0)
    a = _loop(d, kind, model)
    torch.manual_seed(0)
    b = _loop(d, kind, model)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # torch.manual_seed reproduces the default stream


def test_stored_values_for_a_fixed_seed():
    """DDPM-10 with in-kernel Philox noise and a parameter-free model: stored sum and mean of the sample."""
    d = make_diffusion(ModelMeanType.EPSILON, ModelVarType.FIXED_LARGE, T=10)
    x = d.p_sample_loop(lambda x_, t_: 0.3 * torch.sin(x_ + t_.view(-1, 1, 1, 1)), SHAPE, seed=1234)
    assert x.sum().item() == pytest.approx(STORED_SUM, abs=1e-3)
    assert x.abs().mean().item() == pytest.approx(STORED_ABS_MEAN, abs=1e-5)


STORED_SUM = 7.823513031005859
STORED_ABS_MEAN = 0.7420576214790344


def test_hooks_and_previous_x_use_per_step_path(fused_calls):
    d = make_diffusion(T=8)
    model = model_for(d)
    d.p_sample_loop(model, SHAPE, denoised_fn=lambda x0: x0)
    d.ddim_sample_loop(model, SHAPE, cond_fn=lambda x, t: torch.zeros_like(x))
    d.p_sample_loop(model, SHAPE, use_fused=False)
    prev = make_diffusion(ModelMeanType.PREVIOUS_X, T=8)
    prev.p_sample_loop(model_for(prev), SHAPE)
    assert fused_calls == []


def test_progressive_yields_every_step_and_no_grad():
    d = make_diffusion(T=9)
    model = model_for(d)
    for kw in ({}, {"use_fused": False}):
        steps = list(d.p_sample_loop_progressive(model, SHAPE, **kw))
        assert len(steps) == 9 and all(set(s) == {"sample", "pred_xstart"} for s in steps)
        assert not steps[-1]["sample"].requires_grad
        assert torch.is_grad_enabled()
    seen = torch.stack(model.seen_t[-9:])[:, 0]
    assert seen.tolist() == list(range(8, -1, -1))


def test_p_sample_single_step_fused_equals_formula():
    d = make_diffusion(ModelMeanType.EPSILON, ModelVarType.LEARNED_RANGE, T=20)
    model = model_for(d)
    x, t, z = torch.randn(SHAPE), torch.tensor([0, 13]), torch.randn(SHAPE)
    fused = d.p_sample(model, x, t, noise=z)
    out = d.p_mean_variance(model, x, t)
    expected = out["mean"] + (t != 0).float().view(-1, 1, 1, 1) * torch.exp(0.5 * out["log_variance"]) * z
    torch.testing.assert_close(fused["sample"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused["pred_xstart"], out["pred_xstart"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused["sample"][0], out["mean"][0], rtol=1e-5, atol=1e-5)  # no noise at t = 0


def test_p_sample_with_cond_fn_shifts_mean():
    d = make_diffusion(T=20)
    model = model_for(d)
    x, t, z, g = torch.randn(SHAPE), torch.tensor([3, 11]), torch.randn(SHAPE), torch.randn(SHAPE)
    out = d.p_mean_variance(model, x, t)
    got = d.p_sample(model, x, t, cond_fn=lambda x_, t_: g, noise=z)
    expected = out["mean"] + out["variance"] * g + torch.exp(0.5 * out["log_variance"]) * z
    torch.testing.assert_close(got["sample"], expected, rtol=1e-5, atol=1e-5)


def test_ddim_sample_eta0_formula_and_reverse_roundtrip():
    """With a constant-ε model, DDIM (eq. 12, η = 0) and its reverse are exact inverses."""
    d = make_diffusion(T=25)
    cf = closed_form(d.betas)
    eps = torch.randn(SHAPE).double()
    model = lambda x_, t_: eps
    x = torch.randn(SHAPE).double()
    t = torch.tensor([7, 20])
    step = d.ddim_sample(model, x, t, clip_denoised=False)
    ab, ab_prev = col(cf["ab"], t, 4), col(cf["ab_prev"], t, 4)
    x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
    torch.testing.assert_close(step["sample"], ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps,
                               rtol=1e-5, atol=1e-5)
    back = d.ddim_reverse_sample(model, step["sample"], t - 1, clip_denoised=False)
    torch.testing.assert_close(back["sample"], x, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="eta"):
        d.ddim_reverse_sample(model, x, t, eta=0.5)


def test_ddim_sample_with_eta_adds_sigma_noise():
    d = make_diffusion(T=25)
    model = model_for(d)
    x, t, z = torch.randn(SHAPE), torch.tensor([9, 24]), torch.randn(SHAPE)
    eta = float(torch.empty(()).uniform_(0.2, 1.0))
    a = d.ddim_sample(model, x, t, eta=eta, noise=z)
    b = d.ddim_sample(model, x, t, eta=eta, noise=torch.zeros_like(z))
    ab, ab_prev = col(d.alphas_cumprod, t, 4), col(d.alphas_cumprod_prev, t, 4)
    sigma = eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
    torch.testing.assert_close((a["sample"] - b["sample"]).double(), sigma * z.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize("rescale", [False, True])
def test_spaced_fused_loop_equals_per_step_and_maps_timesteps(kind, rescale):
    T = 60
    use = space_timesteps(T, "ddim6")
    d = SpacedDiffusion(use, betas=get_named_beta_schedule("linear", T), model_mean_type=ModelMeanType.EPSILON,
                        model_var_type=ModelVarType.LEARNED_RANGE, loss_type=LossType.MSE,
                        rescale_timesteps=rescale)
    model = model_for(d)
    noise = torch.randn(SHAPE)
    torch.manual_seed(5)
    fused = _loop(d, kind, model, noise=noise)
    fused_t = torch.stack(model.seen_t)[:, 0].tolist()
    model.seen_t.clear()
    torch.manual_seed(5)
    per_step = _loop(d, kind, model, noise=noise, use_fused=False)
    per_step_t = torch.stack(model.seen_t)[:, 0].tolist()
    torch.testing.assert_close(fused, per_step, rtol=1e-5, atol=1e-5)
    expected_t = [t * (1000.0 / T) if rescale else t for t in sorted(use, reverse=True)]
    assert fused_t == pytest.approx(expected_t) and per_step_t == pytest.approx(expected_t)


def test_loop_errors():
    d = make_diffusion(T=5)
    model = model_for(d)
    with pytest.raises(ValueError, match="noise must have shape"):
        d.p_sample_loop(model, SHAPE, noise=torch.randn(1, 3, 4, 4))
    with pytest.raises(TypeError, match="shape"):
        d.ddim_sample_loop(model, torch.Size(SHAPE)[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_cuda_loops_match_cpu_for_a_seed(kind):
    d = make_diffusion(ModelMeanType.EPSILON, ModelVarType.LEARNED_RANGE, T=12)
    model = model_for(d)
    cpu = _loop(d, kind, model, seed=7)
    gpu = _loop(d, kind, model.cuda(), seed=7)
    assert gpu.device.type == "cuda" and d.step_table("cuda").device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
