import math

import numpy as np
import pytest
import torch
from _diffusion_testlib import LEARNED, closed_form, col, make_diffusion

from fastdiff.diffusion import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    get_named_beta_schedule,
)


def _t(n, T):
    return torch.randint(0, T, (n,))


@pytest.mark.parametrize("schedule,T", [("linear", 100), ("cosine", 37)])
def test_schedule_arrays_match_closed_form(schedule, T):
    d = make_diffusion(T=T, schedule=schedule)
    cf = closed_form(d.betas)
    np.testing.assert_allclose(d.alphas_cumprod, cf["ab"], rtol=1e-12)
    np.testing.assert_allclose(d.posterior_variance, cf["post_var"], rtol=1e-10)
    np.testing.assert_allclose(d.posterior_log_variance_clipped[0], np.log(cf["post_var"][1]), rtol=1e-12)
    assert d.num_timesteps == T
    table = d.step_table("cpu")
    assert table.shape == (T, 12) and table.dtype == torch.float32
    assert d.step_table(torch.device("cpu")) is table  # cached per device


def test_q_sample_and_q_mean_variance_closed_form():
    d = make_diffusion(T=60)
    cf = closed_form(d.betas)
    x0, eps, t = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4), _t(5, 60)
    ab = col(cf["ab"], t, 4)
    expected = ab.sqrt() * x0.double() + (1 - ab).sqrt() * eps.double()
    torch.testing.assert_close(d.q_sample(x0, t, noise=eps).double(), expected, rtol=1e-5, atol=1e-5)
    mean, var, log_var = d.q_mean_variance(x0, t)
    torch.testing.assert_close(mean.double(), ab.sqrt() * x0.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var.double(), (1 - ab).expand_as(var), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(log_var.double(), torch.log(1 - ab).expand_as(var), rtol=1e-5, atol=1e-6)


def test_q_sample_gradient_flows_to_x_start():
    d = make_diffusion(T=30)
    x0 = torch.randn(3, 2, 4, requires_grad=True)
    t = _t(3, 30)
    d.q_sample(x0, t, noise=torch.randn(3, 2, 4)).sum().backward()
    torch.testing.assert_close(x0.grad, torch.as_tensor(d.sqrt_alphas_cumprod[t.numpy()], dtype=torch.float32)
                               .view(-1, 1, 1).expand(3, 2, 4))


def test_q_posterior_closed_form_and_eq11_identity():
    """μ̃(x_0, x_t) = coef_x0 x_0 + coef_xt x_t (DDPM eq. 7) and, for x_t = q_sample(x_0, ε),
    μ̃ = (x_t − β_t/√(1−ᾱ_t) ε)/√α_t (DDPM eq. 10-11)."""
    d = make_diffusion(T=50)
    cf = closed_form(d.betas)
    x0, eps, t = torch.randn(6, 3, 4, 4).double(), torch.randn(6, 3, 4, 4).double(), _t(6, 50)
    x_t = d.q_sample(x0, t, noise=eps)
    mean, var, log_var = d.q_posterior_mean_variance(x0, x_t, t)
    assert mean.shape == var.shape == log_var.shape == x0.shape
    expected = col(cf["coef_x0"], t, 4) * x0 + col(cf["coef_xt"], t, 4) * x_t
    torch.testing.assert_close(mean, expected, rtol=1e-6, atol=1e-6)
    b, ab = col(cf["b"], t, 4), col(cf["ab"], t, 4)
    eq11 = (x_t - b / (1 - ab).sqrt() * eps) / (1 - b).sqrt()
    torch.testing.assert_close(mean, eq11, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var.double(), col(cf["post_var"], t, 4).expand_as(var), rtol=1e-5, atol=1e-9)


def test_posterior_is_the_bayes_posterior_by_sampling():
    """x_{t-1} ~ q(x_{t-1}|x_0), x_t ~ q(x_t|x_{t-1}): E[x_{t-1}|x_t] and Var match μ̃ and β̃ (one pixel, many draws)."""
    d = make_diffusion(T=20)
    t = int(torch.randint(2, 20, ()))
    n = 200_000
    x0 = torch.full((n, 1), float(torch.empty(()).uniform_(-1, 1)), dtype=torch.float64)
    ab_prev, beta = d.alphas_cumprod[t - 1], d.betas[t]
    x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * torch.randn_like(x0)
    x_t = math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * torch.randn_like(x0)
    mean, var, _ = d.q_posterior_mean_variance(x0, x_t, torch.full((n,), t))
    resid = x_prev - mean
    assert abs(resid.mean().item()) < 5 * math.sqrt(var[0, 0].item() / n)
    assert resid.var().item() == pytest.approx(var[0, 0].item(), rel=0.02)
    # the posterior mean is linear in x_t with the right slope: residual uncorrelated with x_t
    assert abs(torch.corrcoef(torch.stack([resid[:, 0], x_t[:, 0]]))[0, 1].item()) < 0.01


def _expected_p_mean_variance(d, out, x, t):
    """Hand-written float64 p_θ(x_{t-1}|x_t) for every mean/var type (guided-diffusion's definitions)."""
    cf = closed_form(d.betas)
    C = x.shape[1]
    g = lambda arr: col(arr, t, x.dim())
    out, x = out.double(), x.double()
    mo, v = (out[:, :C], out[:, C:]) if d.model_var_type in LEARNED else (out, None)
    ab = g(cf["ab"])
    if d.model_mean_type == ModelMeanType.EPSILON:
        x0 = (x - (1 - ab).sqrt() * mo) / ab.sqrt()
    elif d.model_mean_type == ModelMeanType.START_X:
        x0 = mo
    elif d.model_mean_type == ModelMeanType.V:
        x0 = ab.sqrt() * x - (1 - ab).sqrt() * mo
    else:
        x0 = (mo - g(cf["coef_xt"]) * x) / g(cf["coef_x0"])
    x0 = x0.clamp(-1, 1)
    mean = mo if d.model_mean_type == ModelMeanType.PREVIOUS_X else g(cf["coef_x0"]) * x0 + g(cf["coef_xt"]) * x
    small = np.log(np.concatenate([[cf["post_var"][1]], cf["post_var"][1:]]))
    if d.model_var_type == ModelVarType.FIXED_SMALL:
        var, log_var = g(cf["post_var"]), g(small)
    elif d.model_var_type == ModelVarType.FIXED_LARGE:
        large = np.concatenate([[cf["post_var"][1]], cf["b"][1:]])
        var, log_var = g(large), g(np.log(large))
    elif d.model_var_type == ModelVarType.LEARNED:
        var, log_var = v.exp(), v
    else:
        frac = (v + 1) / 2
        log_var = frac * g(np.log(cf["b"])) + (1 - frac) * g(small)
        var = log_var.exp()
    return {"mean": mean, "variance": var.expand_as(x), "log_variance": log_var.expand_as(x), "pred_xstart": x0}


@pytest.mark.parametrize("mean_type", list(ModelMeanType))
@pytest.mark.parametrize("var_type", list(ModelVarType))
def test_p_mean_variance_against_hand_formulas(mean_type, var_type):
    T = 30
    d = make_diffusion(mean_type, var_type, T=T)
    C = 3
    x = torch.randn(4, C, 3, 5)
    t = torch.tensor([0, T - 1, *torch.randint(1, T - 1, (2,)).tolist()])
    raw = torch.randn(4, 2 * C if var_type in LEARNED else C, 3, 5)
    if var_type == ModelVarType.LEARNED_RANGE:
        raw[:, C:] = raw[:, C:].clamp(-1, 1)
    got = d.p_mean_variance(lambda x_, t_: raw, x, t, clip_denoised=True)
    exp = _expected_p_mean_variance(d, raw, x, t)
    for key in ("mean", "variance", "log_variance", "pred_xstart"):
        assert got[key].shape == x.shape, key
        # fp32 coefficients: relative 1e-4 of the largest term involved. x̂0 = x/√ᾱ − √(1/ᾱ − 1) ε is formed from
        # terms up to 1/√ᾱ_t times larger than the (clipped) result, so its rounding scales with those terms.
        scale = max(1.0, exp[key].abs().max().item())
        if key == "pred_xstart":
            terms = float(d.sqrt_recip_alphas_cumprod[t.numpy()].max()) * max(x.abs().max(), raw.abs().max())
            scale = max(scale, float(terms))
        torch.testing.assert_close(got[key].double(), exp[key], rtol=1e-4, atol=2e-5 * scale, msg=key)


def test_p_mean_variance_passes_model_kwargs_and_scaled_timesteps_and_denoised_fn():
    d = make_diffusion(ModelMeanType.START_X, T=40, rescale_timesteps=True)
    seen = {}

    def model(x, t, y):
        seen["t"], seen["y"] = t, y
        return torch.full_like(x, 3.0)

    y = torch.randn(2)
    out = d.p_mean_variance(model, torch.randn(2, 1, 4), torch.tensor([4, 10]), clip_denoised=True,
                            denoised_fn=lambda x0: -0.5 * x0, model_kwargs={"y": y})
    torch.testing.assert_close(seen["t"], torch.tensor([100.0, 250.0]))
    assert seen["y"] is y
    # denoised_fn runs before clipping: 3 -> -1.5 -> -1
    assert (out["pred_xstart"] == -1.0).all()


def test_model_output_channel_errors_name_the_var_type():
    d = make_diffusion(var_type=ModelVarType.LEARNED_RANGE, T=20)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="model_var_type=LEARNED_RANGE"):
        d.p_mean_variance(lambda x_, t_: torch.randn(2, 3, 4, 4), x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="model_var_type=LEARNED_RANGE"):
        d.training_losses(lambda x_, t_: torch.randn(2, 3, 4, 4), x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="model_var_type=LEARNED_RANGE"):
        d.p_sample_loop(lambda x_, t_: torch.randn(2, 3, 4, 4), (2, 3, 4, 4))
    fixed = make_diffusion(var_type=ModelVarType.FIXED_SMALL, T=20)
    with pytest.raises(ValueError, match="model_var_type=FIXED_SMALL"):
        fixed.p_sample(lambda x_, t_: torch.randn(2, 6, 4, 4), x, torch.tensor([1, 2]))


def test_constructor_errors():
    betas = get_named_beta_schedule("linear", 100)
    with pytest.raises(TypeError, match="model_mean_type"):
        GaussianDiffusion(betas=betas, model_mean_type="epsilon", model_var_type=ModelVarType.FIXED_SMALL,
                          loss_type=LossType.MSE)
    with pytest.raises(TypeError, match="loss_type"):
        GaussianDiffusion(betas=betas, model_mean_type=ModelMeanType.EPSILON,
                          model_var_type=ModelVarType.FIXED_SMALL, loss_type=1)
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(betas=[0.1, 1.5], model_mean_type=ModelMeanType.EPSILON,
                          model_var_type=ModelVarType.FIXED_SMALL, loss_type=LossType.MSE)
    d = make_diffusion(T=10)
    with pytest.raises(IndexError, match="t must lie in"):
        d.q_sample(torch.randn(2, 3), torch.tensor([3, 10]))


def test_loss_type_is_vb():
    assert [lt for lt in LossType if lt.is_vb()] == [LossType.KL, LossType.RESCALED_KL]


def test_condition_mean_and_condition_score():
    d = make_diffusion(T=30)
    x, t = torch.randn(3, 2, 4), torch.tensor([0, 7, 29])
    g = torch.randn(3, 2, 4)
    model = lambda x_, t_: torch.tanh(x_)
    out = d.p_mean_variance(model, x, t, clip_denoised=False)
    cond_fn = lambda x_, t_, **kw: g
    torch.testing.assert_close(d.condition_mean(cond_fn, out, x, t), out["mean"] + out["variance"] * g)
    cond = d.condition_score(cond_fn, out, x, t)
    ab = col(d.alphas_cumprod, t, 3).float()
    # ε' = ε − √(1−ᾱ) g  =>  x̂0' = x̂0 + (1−ᾱ)/√ᾱ g
    torch.testing.assert_close(cond["pred_xstart"], out["pred_xstart"] + (1 - ab) / ab.sqrt() * g,
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cond["mean"], d.q_posterior_mean_variance(cond["pred_xstart"], x, t)[0])
