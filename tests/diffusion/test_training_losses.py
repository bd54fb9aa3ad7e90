import math

import numpy as np
import pytest
import torch
from _diffusion_testlib import closed_form, col, images, make_diffusion, model_for

from fastdiff.diffusion import (
    LossType,
    ModelMeanType,
    ModelVarType,
    discretized_gaussian_log_likelihood,
    mean_flat,
)


def _oracle(d, x0, eps):
    """A model that outputs the exact target of its mean type (and zeros as variance values)."""
    cf = closed_form(d.betas)

    def model(x_t, t):
        ab = col(cf["ab"], t, x0.dim()).float()
        target = {ModelMeanType.EPSILON: eps, ModelMeanType.START_X: x0,
                  ModelMeanType.V: ab.sqrt() * eps - (1 - ab).sqrt() * x0,
                  ModelMeanType.PREVIOUS_X: col(cf["coef_x0"], t, 4).float() * x0
                  + col(cf["coef_xt"], t, 4).float() * x_t}[d.model_mean_type]
        if d.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            target = torch.cat([target, torch.zeros_like(target)], dim=1)
        return target
    return model


@pytest.mark.parametrize("mean_type", list(ModelMeanType))
def test_mse_target_per_mean_type(mean_type):
    d = make_diffusion(mean_type, T=50)
    x0, eps, t = images(), None, torch.randint(0, 50, (3,))
    eps = torch.randn_like(x0)
    exact = d.training_losses(_oracle(d, x0, eps), x0, t, noise=eps)
    assert set(exact) == {"loss", "mse"} and exact["loss"].shape == (3,)
    assert exact["mse"].max() < 1e-8
    off = d.training_losses(lambda x_t, t_: _oracle(d, x0, eps)(x_t, t_) + 0.5, x0, t, noise=eps)
    torch.testing.assert_close(off["mse"], torch.full((3,), 0.25), rtol=1e-4, atol=1e-6)


def test_mse_loss_uses_q_sample_input_and_model_kwargs():
    d = make_diffusion(T=30)
    x0, eps, t = images(), torch.randn(3, 3, 5, 4), torch.randint(0, 30, (3,))
    seen = {}

    def model(x_t, t_, y):
        seen["x_t"], seen["y"] = x_t, y
        return x_t * y.view(-1, 1, 1, 1)

    y = torch.randn(3)
    terms = d.training_losses(model, x0, t, model_kwargs={"y": y}, noise=eps)
    torch.testing.assert_close(seen["x_t"], d.q_sample(x0, t, noise=eps))
    torch.testing.assert_close(terms["loss"], mean_flat((eps - seen["x_t"] * y.view(-1, 1, 1, 1)) ** 2))


class _SplitModel(torch.nn.Module):
    """Mean channels from parameter a, variance channels from parameter b."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(1, 3, 1, 1))
        self.b = torch.nn.Parameter(torch.rand(1, 3, 1, 1) * 2 - 1)

    def forward(self, x, t):
        return torch.cat([x * self.a, (self.b + 0 * x).clamp(-1, 1)], dim=1)


def test_hybrid_loss_vb_term_does_not_train_the_mean():
    d = make_diffusion(var_type=ModelVarType.LEARNED_RANGE, T=40)
    model = _SplitModel()
    x0, t = images(), torch.tensor([0, 5, 39])
    terms = d.training_losses(model, x0, t)
    assert set(terms) == {"loss", "mse", "vb"}
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    terms["vb"].sum().backward(retain_graph=True)
    assert model.a.grad is None or model.a.grad.abs().max() == 0
    assert model.b.grad is not None and model.b.grad.abs().max() > 0
    model.zero_grad()
    terms["mse"].sum().backward()
    assert model.a.grad.abs().max() > 0
    assert model.b.grad is None or model.b.grad.abs().max() == 0


def test_rescaled_mse_scales_vb_by_T_over_1000():
    T = 40
    x0, eps, t = images(), torch.randn(3, 3, 5, 4), torch.randint(0, T, (3,))
    model = _SplitModel()
    plain = make_diffusion(var_type=ModelVarType.LEARNED_RANGE, loss_type=LossType.MSE, T=T)
    rescaled = make_diffusion(var_type=ModelVarType.LEARNED_RANGE, loss_type=LossType.RESCALED_MSE, T=T)
    a = plain.training_losses(model, x0, t, noise=eps)
    b = rescaled.training_losses(model, x0, t, noise=eps)
    torch.testing.assert_close(b["mse"], a["mse"])
    torch.testing.assert_close(b["vb"], a["vb"] * (T / 1000.0))
    assert (a["vb"] > 0).all()


def _hand_vb_bits(d, model, x0, x_t, t):
    """L_{t} in bits per dim from hand formulas: Gaussian KL (t > 0) or discretised decoder NLL (t = 0)."""
    cf = closed_form(d.betas)
    out = d.p_mean_variance(model, x_t, t, clip_denoised=False)
    mu, lv = out["mean"].double(), out["log_variance"].double()
    true_mu = col(cf["coef_x0"], t, 4) * x0.double() + col(cf["coef_xt"], t, 4) * x_t.double()
    true_lv = col(np.log(np.concatenate([[cf["post_var"][1]], cf["post_var"][1:]])), t, 4)
    kl = 0.5 * (lv - true_lv + (true_lv.exp() + (true_mu - mu) ** 2) / lv.exp() - 1)
    nll = -discretized_gaussian_log_likelihood(x0.double(), means=mu, log_scales=0.5 * lv)
    per = torch.where((t == 0).view(-1, 1, 1, 1), nll, kl)
    return per.flatten(1).mean(1) / math.log(2.0)


@pytest.mark.parametrize("loss_type", [LossType.KL, LossType.RESCALED_KL])
def test_kl_losses_match_hand_bound(loss_type):
    T = 30
    d = make_diffusion(var_type=ModelVarType.LEARNED_RANGE, loss_type=loss_type, T=T)
    model = model_for(d)
    x0, eps = images(4), torch.randn(4, 3, 5, 4)
    t = torch.tensor([0, 1, 17, T - 1])
    terms = d.training_losses(model, x0, t, noise=eps)
    assert set(terms) == {"loss"}
    expected = _hand_vb_bits(d, model, x0, d.q_sample(x0, t, noise=eps), t)
    if loss_type == LossType.RESCALED_KL:
        expected = expected * T
    torch.testing.assert_close(terms["loss"].double(), expected, rtol=1e-4, atol=1e-5)
    terms["loss"].sum().backward()
    assert model.weight.grad.abs().max() > 0


def test_calc_bpd_loop_on_tiny_model():
    T = 12
    d = make_diffusion(var_type=ModelVarType.LEARNED_RANGE, T=T)
    x0 = images(2, 3, 4, 4)
    out = d.calc_bpd_loop(model_for(d), x0, clip_denoised=True)
    assert set(out) == {"total_bpd", "prior_bpd", "vb", "xstart_mse", "mse"}
    assert out["total_bpd"].shape == out["prior_bpd"].shape == (2,)
    for key in ("vb", "xstart_mse", "mse"):
        assert out[key].shape == (2, T), key
        assert torch.isfinite(out[key]).all(), key
    assert torch.isfinite(out["total_bpd"]).all() and (out["total_bpd"] > 0).all()
    torch.testing.assert_close(out["total_bpd"], out["vb"].sum(1) + out["prior_bpd"])
    assert (out["vb"] >= 0).all() and (out["prior_bpd"] >= 0).all()


def test_prior_bpd_closed_form():
    d = make_diffusion(T=25)
    x0 = images(3)
    ab = d.alphas_cumprod[-1]
    kl = 0.5 * (-1 - math.log(1 - ab) + (1 - ab) + ab * x0.double() ** 2)
    torch.testing.assert_close(d._prior_bpd(x0).double(), kl.flatten(1).mean(1) / math.log(2), rtol=1e-4,
                               atol=1e-7)
