"""SIDDM / DDGAN (fastdiff.training.adversarial): the few-step schedule, the posterior sampler, each loss term's value,
sign and gradient flow, λ_AFD = 0 as the marginal GAN, shapes for every T, and two-player training in the Trainer
(optimizers, generator-only EMA, bit-identical resume, non-finite skip, config errors)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from trainkit import TensorData, assert_tree_equal

from fastdiff.models.siddm import MLPDDGANDiscriminator, MLPGenerator, MLPSIDDMDiscriminator
from fastdiff.training import TrainConfig, Trainer, load_checkpoint, list_checkpoints
from fastdiff.training.adversarial import (
    FEW_STEPS,
    AdversarialPair,
    DDGANObjective,
    SIDDMObjective,
    few_step_diffusion,
    posterior_sample,
    q_sample_pairs,
    q_step,
    sample_few_step,
    vp_sde_betas,
)

NZ = 3


def _alpha_bar(t, beta_min=0.1, beta_max=20.0):
    return math.exp(-0.5 * t * t * (beta_max - beta_min) - t * beta_min)


def _pair(kind: str = "siddm", seed: int = 0) -> AdversarialPair:
    torch.manual_seed(seed)
    disc = MLPSIDDMDiscriminator(2, width=32, depth=1) if kind == "siddm" else MLPDDGANDiscriminator(2, width=32,
                                                                                                       depth=1)
    return AdversarialPair(MLPGenerator(2, nz=NZ, width=32, depth=2), disc)


def _data(n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-2, 3, (n, 2), generator=g) * 0.5 + 0.05 * torch.randn(n, 2, generator=g)).float()


def _draw(objective, n: int = 16, seed: int = 1):
    return objective.draw(n, (2,), torch.Generator().manual_seed(seed))


def _grads(module: nn.Module) -> dict:
    return {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}


def _backward(objective, pair, x, draw, player, y=None):
    pair.zero_grad(set_to_none=True)
    loss, terms, per_sample = objective.losses(pair, x, y, draw, player)
    loss.backward()
    return loss, terms, per_sample


# ---------------------------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("T", FEW_STEPS)
def test_vp_sde_betas_match_the_discretised_sde(T):
    betas = vp_sde_betas(T)
    assert betas.shape == (T,) and betas.dtype == np.float64
    eps = 1e-3
    ts = [eps + (1 - eps) * i / T for i in range(T + 1)]
    expected = [1 - _alpha_bar(ts[i]) / _alpha_bar(ts[i - 1]) for i in range(1, T + 1)]
    np.testing.assert_allclose(betas, expected, rtol=1e-12)
    assert np.all(np.diff(betas) > 0)                        # noise grows along the chain
    # every T ends at the same ᾱ(1)/ᾱ(ε): x_T is (nearly) N(0, I)
    np.testing.assert_allclose(np.prod(1 - betas), _alpha_bar(1.0) / _alpha_bar(eps), rtol=1e-10)
    d = few_step_diffusion(T)
    assert d.num_timesteps == T and np.allclose(d.betas, betas)


def test_vp_sde_betas_known_values():
    np.testing.assert_allclose(vp_sde_betas(4), [0.4782553, 0.849206, 0.95641771, 0.9874039], rtol=1e-6)
    np.testing.assert_allclose(vp_sde_betas(1), [1 - 4.3190497594e-05], rtol=1e-9)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, None])
def test_bad_number_of_steps_is_named(bad):
    with pytest.raises(ValueError, match="num_steps"):
        few_step_diffusion(bad)


def test_bad_schedule_arguments_are_named():
    with pytest.raises(ValueError, match="beta_min"):
        vp_sde_betas(4, beta_min=30.0)
    with pytest.raises(ValueError, match="eps_small"):
        vp_sde_betas(4, eps_small=1.0)


# ---------------------------------------------------------------------------------------------------- chain math


def test_q_sample_pairs_and_q_step():
    d = few_step_diffusion(4)
    x0, e1, e2 = torch.randn(3, 8, 2).unbind(0)
    t = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    x_prev, x_t = q_sample_pairs(d, x0, t, e1, e2)
    ab = torch.tensor(d.alphas_cumprod, dtype=torch.float32)
    beta = torch.tensor(d.betas, dtype=torch.float32)
    for i in range(8):
        k = int(t[i])
        want_prev = x0[i] if k == 0 else ab[k - 1].sqrt() * x0[i] + (1 - ab[k - 1]).sqrt() * e1[i]
        torch.testing.assert_close(x_prev[i], want_prev, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(x_t[i], (1 - beta[k]).sqrt() * want_prev + beta[k].sqrt() * e2[i],
                                   rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(q_step(d, x_prev, t, e2), x_t)


@pytest.mark.parametrize("T", FEW_STEPS)
def test_posterior_sample_is_the_ddpm_posterior(T):
    d = few_step_diffusion(T)
    g = torch.Generator().manual_seed(T)
    x0, x_t, noise = torch.randn(3, 12, 2, generator=g).unbind(0)
    t = torch.arange(12) % T
    mean, var, _ = d.q_posterior_mean_variance(x0, x_t, t)
    want = mean + (t > 0).float()[:, None] * var.sqrt() * noise
    torch.testing.assert_close(posterior_sample(d, x0, x_t, t, noise), want, rtol=1e-5, atol=1e-6)
    # the last step returns the generator's x̂_0 itself (β̃ = 0, coefficient of x_t = 0)
    last = t == 0
    torch.testing.assert_close(posterior_sample(d, x0, x_t, t, noise)[last], x0[last], rtol=1e-6, atol=1e-6)


def test_sample_few_step_runs_the_posterior_chain():
    d = few_step_diffusion(4)

    class Affine(nn.Module):  # x̂_0 = 0.5 x_t + 0.1 t + z[:, :2]
        def forward(self, x_t, t, z):
            return 0.5 * x_t + 0.1 * t[:, None].float() + z[:, :2]

    G = Affine()
    got = sample_few_step(G, d, (6, 2), nz=NZ, rng=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, generator=g)
    for i in (3, 2, 1, 0):
        t = torch.full((6,), i)
        x0 = G(x, t, torch.randn(6, NZ, generator=g))
        mean, var, _ = d.q_posterior_mean_variance(x0, x, t)
        x = mean + (var.sqrt() * torch.randn(6, 2, generator=g) if i > 0 else 0)
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-6)
    again = sample_few_step(G, d, (6, 2), nz=NZ, seed=5)
    torch.testing.assert_close(again, sample_few_step(G, d, (6, 2), nz=NZ, seed=5))


@pytest.mark.parametrize("T", FEW_STEPS)
@pytest.mark.parametrize("kind", ["siddm", "ddgan"])
def test_shapes_for_every_T(T, kind):
    d = few_step_diffusion(T)
    objective = SIDDMObjective(d, nz=NZ) if kind == "siddm" else DDGANObjective(d, nz=NZ)
    pair, x = _pair(kind), _data(10)
    draw = _draw(objective, 10)
    assert len(draw) == 10 and draw.t.shape == (10,) and int(draw.t.max()) < T
    assert draw.phases["generator"].z.shape == (10, NZ)
    for player in objective.players:
        loss, terms, per_sample = objective.losses(pair, x, None, draw, player)
        assert loss.shape == () and per_sample.shape == (10,) and torch.isfinite(loss)
        assert all(v.shape == () for v in terms.values())
    assert sample_few_step(pair.generator, d, (7, 2), nz=NZ, seed=0).shape == (7, 2)


# ---------------------------------------------------------------------------------------------------- loss terms


class StubSIDDMDiscriminator(nn.Module):
    """logit = b, afd_pred = c·x_prev, denoised = e·x_prev: every term has a closed form."""

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.tensor(0.3))
        self.c = nn.Parameter(torch.tensor(0.7))
        self.e = nn.Parameter(torch.tensor(0.9))

    def forward(self, x_prev, t):
        return self.b.expand(x_prev.shape[0]), self.c * x_prev, self.e * x_prev


def _manual_phase(objective, pair, x0, phase):
    d = objective.diffusion
    x_prev, x_t = q_sample_pairs(d, x0, phase.t, phase.eps_prev, phase.eps_step)
    fake = posterior_sample(d, pair.generator(x_t, phase.t, phase.z), x_t, phase.t, phase.eps_post)
    mean_t = torch.from_numpy(d.alphas).float().sqrt()[phase.t, None] * fake  # x̄'_t = √(1 − β_t) x'_{t−1}
    return x_prev, x_t, fake, mean_t


@pytest.mark.parametrize("lambda_afd", [0.0, 0.5])
def test_siddm_loss_values_and_signs(lambda_afd):
    d = few_step_diffusion(4)
    objective = SIDDMObjective(d, nz=NZ, lambda_afd=lambda_afd, lambda_denoise=0.25)
    pair = AdversarialPair(MLPGenerator(2, nz=NZ, width=16, depth=1), StubSIDDMDiscriminator())
    x0, draw = _data(), _draw(objective)
    D = pair.discriminator
    b, c, e = (float(v.detach()) for v in (D.b, D.c, D.e))
    # discriminator player
    x_prev, _, fake, fake_t = _manual_phase(objective, pair, x0, draw.phases["discriminator"])
    loss, terms, _ = objective.losses(pair, x0, None, draw, "discriminator")
    sq = lambda a, z: (a - z).square().sum(1)  # noqa: E731
    want = F.softplus(torch.tensor(-b)) + F.softplus(torch.tensor(b)) + 0.25 * sq(e * x_prev, x0).mean()
    if lambda_afd:
        want = want + sq(c * fake, fake_t).mean()
        torch.testing.assert_close(terms["afd_regression"], sq(c * fake, fake_t).mean().detach())
    else:
        assert "afd_regression" not in terms
    torch.testing.assert_close(loss, want.detach(), rtol=1e-5, atol=1e-6)
    assert float(terms["d_real"]) == pytest.approx(math.log1p(math.exp(-b)))   # real pushes the logit up
    assert float(terms["d_fake"]) == pytest.approx(math.log1p(math.exp(b)))    # fake pushes it down
    # generator player: non-saturating GAN + λ[(1 − β)‖x' − x_{t−1}‖² − ‖C(x') − x'_t‖²]/β
    phase = draw.phases["generator"]
    x_prev, _, fake, fake_t = _manual_phase(objective, pair, x0, phase)
    beta = torch.tensor(d.betas, dtype=torch.float32)[phase.t]
    loss, terms, _ = objective.losses(pair, x0, None, draw, "generator")
    cross = (1 - beta) * sq(fake, x_prev) / beta
    entropy = -sq(c * fake, fake_t) / beta
    want = F.softplus(torch.tensor(-b)) + lambda_afd * (cross + entropy).mean()
    torch.testing.assert_close(loss, want.detach(), rtol=1e-5, atol=1e-5)
    if lambda_afd:
        assert float(terms["afd_cross_entropy"]) > 0 > float(terms["afd_entropy"])
        torch.testing.assert_close(terms["afd_entropy"], entropy.mean().detach(), rtol=1e-5, atol=1e-6)
    else:
        assert set(terms) == {"g_adv"}


def test_siddm_gradient_flow():
    d = few_step_diffusion(4)
    objective = SIDDMObjective(d, nz=NZ, lambda_afd=1.0)
    pair, x0 = _pair(), _data()
    draw = _draw(objective)
    # the discriminator's loss reaches φ, ψ and not θ (x'_{t−1} is drawn without a graph)
    _backward(objective, pair, x0, draw, "discriminator")
    assert all(p.grad is None for p in pair.generator.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pair.discriminator.parameters())
    # the generator's loss reaches θ only: D_φ and C_ψ are frozen for it, and their flags are restored
    _backward(objective, pair, x0, draw, "generator")
    assert all(p.grad is None for p in pair.discriminator.parameters())
    assert all(p.requires_grad for p in pair.discriminator.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pair.generator.parameters())


def test_afd_regression_updates_only_the_regression_head_and_the_shared_trunk():
    d = few_step_diffusion(4)
    pair, x0 = _pair(), _data()
    with_afd, without = SIDDMObjective(d, nz=NZ, lambda_afd=1.0), SIDDMObjective(d, nz=NZ, lambda_afd=0.0)
    draw = _draw(with_afd)
    _backward(with_afd, pair, x0, draw, "discriminator")
    g1 = _grads(pair.discriminator)
    _backward(without, pair, x0, draw, "discriminator")
    g0 = _grads(pair.discriminator)
    changed = {n for n in g1 if g0[n] is None or not torch.allclose(g1[n], g0[n], atol=1e-7)}
    assert {n for n in changed if n.startswith("afd_head.")} == {n for n in g1 if n.startswith("afd_head.")}
    assert any(n.startswith("layers.") for n in changed)                     # the shared trunk
    assert not any(n.startswith(("out.", "denoise_head.")) for n in changed)  # the logit and denoising heads
    # and λ_AFD = 0 leaves the regression head untouched
    assert all(g0[n] is None for n in g0 if n.startswith("afd_head."))


def test_generator_afd_term_changes_the_generator_update():
    d = few_step_diffusion(4)
    pair, x0 = _pair(), _data()
    with_afd, without = SIDDMObjective(d, nz=NZ, lambda_afd=1.0), SIDDMObjective(d, nz=NZ, lambda_afd=0.0)
    draw = _draw(with_afd)
    _backward(with_afd, pair, x0, draw, "generator")
    g1 = _grads(pair.generator)
    _backward(without, pair, x0, draw, "generator")
    g0 = _grads(pair.generator)
    assert any(not torch.allclose(g1[n], g0[n]) for n in g1)


def test_lambda_afd_zero_is_the_marginal_gan():
    """λ_AFD = 0 (and no regulariser): D's loss is softplus(−D(x_{t−1})) + softplus(D(x'_{t−1})), G's is
    softplus(−D(x'_{t−1})), with the same gradients as that loss written out by hand."""
    d = few_step_diffusion(2)
    objective = SIDDMObjective(d, nz=NZ, lambda_afd=0.0, lambda_denoise=0.0)
    pair, x0 = _pair(), _data()
    draw = _draw(objective)
    x_prev, _, fake, _ = _manual_phase(objective, pair, x0, draw.phases["generator"])
    pair.zero_grad(set_to_none=True)
    manual = F.softplus(-pair.discriminator(fake, draw.phases["generator"].t)[0]).mean()
    manual_grads = torch.autograd.grad(manual, list(pair.generator.parameters()))
    loss, terms, _ = _backward(objective, pair, x0, draw, "generator")
    torch.testing.assert_close(loss.detach(), manual.detach())
    for p, want in zip(pair.generator.parameters(), manual_grads):
        torch.testing.assert_close(p.grad, want)
    phase = draw.phases["discriminator"]
    x_prev, _, fake, _ = _manual_phase(objective, pair, x0, phase)
    want = (F.softplus(-pair.discriminator(x_prev, phase.t)[0])
            + F.softplus(pair.discriminator(fake.detach(), phase.t)[0])).mean()
    loss, terms, _ = objective.losses(pair, x0, None, draw, "discriminator")
    torch.testing.assert_close(loss, want.detach())
    assert set(terms) == {"d_real", "d_fake"}


def test_ddgan_losses_r1_and_gradient_flow():
    d = few_step_diffusion(4)
    objective = DDGANObjective(d, nz=NZ, r1_gamma=0.4)

    class Linear(nn.Module):  # logit = w·x_prev + u·x_t: ∇_{x_{t−1}} D = w, so R1 = ‖w‖²
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.5, -1.5]))
            self.u = nn.Parameter(torch.tensor([0.2, 0.1]))

        def forward(self, x_prev, t, x_t):
            return x_prev @ self.w + x_t @ self.u

    torch.manual_seed(0)
    pair = AdversarialPair(MLPGenerator(2, nz=NZ, width=16, depth=1), Linear())
    x0, draw = _data(), _draw(objective)
    loss, terms, _ = _backward(objective, pair, x0, draw, "discriminator")
    assert float(terms["r1"]) == pytest.approx(0.5 ** 2 + 1.5 ** 2)
    x_prev, x_t, fake, _ = _manual_phase(objective, pair, x0, draw.phases["discriminator"])
    D = pair.discriminator
    want = F.softplus(-D(x_prev, None, x_t)) + F.softplus(D(fake, None, x_t)) + 0.2 * 2.5
    torch.testing.assert_close(loss, want.mean().detach(), rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in pair.generator.parameters())
    # the R1 term reaches w (γ w on top of the GAN gradient): compare with γ = 0
    w_grad = D.w.grad.clone()
    _backward(DDGANObjective(d, nz=NZ, r1_gamma=0.0), pair, x0, draw, "discriminator")
    torch.testing.assert_close(w_grad - D.w.grad, 0.4 * D.w.detach())
    loss, terms, _ = _backward(objective, pair, x0, draw, "generator")
    assert set(terms) == {"g_adv"} and all(p.grad is None for p in D.parameters())
    assert all(p.grad is not None for p in pair.generator.parameters())


def test_siddm_r1_option_is_off_by_default_and_exact():
    """SIDDMObjective(r1_gamma=γ): the optional R1 term γ/2 ‖∇_{x_{t−1}} D_φ‖² on real x_{t−1} (default 0: absent),
    reaching only the logit's parameters; the generator's loss is unchanged."""
    d = few_step_diffusion(4)
    assert SIDDMObjective(d, nz=NZ).r1_gamma == 0.0

    class Linear(nn.Module):  # logit = w·x_prev: ∇_{x_{t−1}} D = w, so R1 = ‖w‖²; afd / denoised heads: a·x_prev
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.5, -1.5]))
            self.a = nn.Parameter(torch.tensor(0.3))

        def forward(self, x_prev, t):
            return x_prev @ self.w, self.a * x_prev, self.a * x_prev

    torch.manual_seed(0)
    pair = AdversarialPair(MLPGenerator(2, nz=NZ, width=16, depth=1), Linear())
    on, off = SIDDMObjective(d, nz=NZ, r1_gamma=0.4), SIDDMObjective(d, nz=NZ)
    x0, draw = _data(), _draw(on)
    loss_off, terms_off, _ = _backward(off, pair, x0, draw, "discriminator")
    assert "r1" not in terms_off
    w_off = pair.discriminator.w.grad.clone()
    loss_on, terms_on, _ = _backward(on, pair, x0, draw, "discriminator")
    assert float(terms_on["r1"]) == pytest.approx(0.5 ** 2 + 1.5 ** 2)
    torch.testing.assert_close(loss_on, loss_off + 0.2 * 2.5, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pair.discriminator.w.grad - w_off, 0.4 * pair.discriminator.w.detach())
    assert all(p.grad is None for p in pair.generator.parameters())
    g_on, t_on, _ = _backward(on, pair, x0, draw, "generator")
    g_off, t_off, _ = _backward(off, pair, x0, draw, "generator")
    torch.testing.assert_close(g_on, g_off) and set(t_on) == set(t_off)
    with pytest.raises(ValueError, match="r1_gamma"):
        SIDDMObjective(d, nz=2, r1_gamma=-1)


# ---------------------------------------------------------------------------------------------------- bad configs


def test_bad_objective_arguments_are_named():
    d = few_step_diffusion(2)
    with pytest.raises(ValueError, match="lambda_afd"):
        SIDDMObjective(d, nz=2, lambda_afd=-0.1)
    with pytest.raises(ValueError, match="lambda_denoise"):
        SIDDMObjective(d, nz=2, lambda_denoise=float("nan"))
    with pytest.raises(ValueError, match="r1_gamma"):
        DDGANObjective(d, nz=2, r1_gamma=-1)
    for bad in (0, -3, 1.5):
        with pytest.raises(ValueError, match="nz"):
            SIDDMObjective(d, nz=bad)
    with pytest.raises(ValueError, match="nz"):
        MLPGenerator(2, nz=0)
    with pytest.raises(ValueError, match="reduction"):
        SIDDMObjective(d, nz=2, reduction="max")
    with pytest.raises(TypeError, match="diffusion"):
        SIDDMObjective("linear", nz=2)
    with pytest.raises(ValueError, match="player"):
        SIDDMObjective(d, nz=2).losses(_pair(), _data(), None, _draw(SIDDMObjective(d, nz=2)), "critic")


def test_network_shape_mismatches_are_named():
    d = few_step_diffusion(2)
    objective = SIDDMObjective(d, nz=NZ)
    draw, x0 = _draw(objective, 4), _data(4)

    class BadG(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, x_t, t, z):
            return x_t[:, :1] + self.p

    with pytest.raises(ValueError, match="generator must return x0_pred"):
        objective.losses(AdversarialPair(BadG(), StubSIDDMDiscriminator()), x0, None, draw, "generator")

    class BadD(StubSIDDMDiscriminator):
        def forward(self, x_prev, t):
            return self.b.expand(x_prev.shape[0]), x_prev[:, :1], x_prev

    with pytest.raises(ValueError, match="afd_pred"):
        objective.losses(AdversarialPair(_pair().generator, BadD()), x0, None, draw, "discriminator")
    with pytest.raises(ValueError, match="z must be"):
        _pair().generator(x0, torch.zeros(4, dtype=torch.int64), torch.zeros(4, NZ + 1))
    with pytest.raises(ValueError, match="x_t must be"):
        _pair().generator(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64), torch.zeros(4, NZ))
    with pytest.raises(ValueError, match="draw has"):
        objective.losses(_pair(), _data(5), None, draw, "generator")


# ---------------------------------------------------------------------------------------------------- Trainer


def _config(tmp_path, **kw) -> TrainConfig:
    base = dict(total_steps=6, batch_size=16, lr=1e-3, ema_rates=(0.9,), save_interval=3, log_interval=1, seed=3,
                player_optim={"discriminator": {"lr": 2e-3, "adam_betas": (0.5, 0.9)},
                              "generator": {"adam_betas": (0.5, 0.9)}})
    base.update(kw)
    return TrainConfig(**base)


def _trainer(tmp_path, kind="siddm", **kw) -> Trainer:
    d = few_step_diffusion(4)
    objective = SIDDMObjective(d, nz=NZ) if kind == "siddm" else DDGANObjective(d, nz=NZ)
    return Trainer(_pair(kind), objective, TensorData(_data(64)), _config(tmp_path, **kw), tmp_path, device="cpu")


@pytest.mark.parametrize("kind", ["siddm", "ddgan"])
def test_trainer_two_players(tmp_path, kind):
    tr = _trainer(tmp_path, kind)
    assert [p.name for p in tr.players] == ["discriminator", "generator"]
    groups = {p.name: p.optimizer.param_groups[0] for p in tr.players}
    assert groups["discriminator"]["betas"] == (0.5, 0.9) and groups["generator"]["betas"] == (0.5, 0.9)
    assert tr._param_names and all(n.startswith("generator.") for n in tr._param_names)   # EMA: generator only
    before = copy.deepcopy(tr.model.state_dict())
    info = tr.train_step()
    assert info["lrs"] == {"discriminator": 2e-3, "generator": 1e-3} and not info["skipped"]
    assert {"loss_discriminator", "loss_generator", "d_real", "d_fake", "g_adv"} <= set(info["terms"])
    after = tr.model.state_dict()
    for prefix in ("generator.", "discriminator."):  # both players moved
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix))
    tr.train()
    records = [__import__("json").loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(records) == 5 and {"term/d_real", "term/g_adv", "grad_norm/discriminator",
                                  "lr/generator"} <= set(records[-1])
    state = load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1])
    assert set(state["optimizer"]) == {"discriminator", "generator"}
    assert set(state["ema"]["0.9"]) == set(tr._param_names)


def test_two_player_resume_is_bit_identical(tmp_path):
    straight = _trainer(tmp_path / "a")
    straight.train()
    reference = load_checkpoint(list_checkpoints(tmp_path / "a" / "checkpoints")[-1])
    first = _trainer(tmp_path / "b", total_steps=3)
    first.train()
    resumed = _trainer(tmp_path / "b")
    resumed.train(resume=True)
    state = load_checkpoint(list_checkpoints(tmp_path / "b" / "checkpoints")[-1])
    assert state["step"] == reference["step"] == 6
    n = sum(assert_tree_equal(state[k], reference[k], k)
            for k in ("model", "ema", "optimizer", "rng", "data", "skipped", "step"))
    assert n > 40


def test_two_player_nonfinite_generator_step_is_skipped(tmp_path):
    tr = _trainer(tmp_path, max_skipped_steps=2)
    gen = tr.model.generator
    real_forward = gen.forward
    gen.forward = lambda *a, **k: real_forward(*a, **k) * float("nan")
    g_before = copy.deepcopy(gen.state_dict())
    d_before = copy.deepcopy(tr.model.discriminator.state_dict())
    ema_before = [t.clone() for t in tr.ema[0.9]]
    info = tr.train_step()
    assert info["skipped"] and tr.skipped_total == 1 and tr.step == 1
    assert all(torch.equal(g_before[k], v) for k, v in gen.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(ema_before, tr.ema[0.9]))
    # the discriminator's phase saw NaN fakes too: skipped, untouched
    assert all(torch.equal(d_before[k], v) for k, v in tr.model.discriminator.state_dict().items())
    from fastdiff.training import TrainingDivergedError

    with pytest.raises(TrainingDivergedError):
        tr.train_step()


def test_player_optim_errors_are_named(tmp_path):
    with pytest.raises(ValueError, match="player_optim.*unknown players"):
        _trainer(tmp_path, player_optim={"critic": {"lr": 1e-3}})
    with pytest.raises(ValueError, match=r"player_optim\['generator'\] has unknown keys"):
        TrainConfig(total_steps=1, batch_size=1, player_optim={"generator": {"momentum": 0.9}})
    with pytest.raises(ValueError, match=r"player_optim\['generator'\].adam_betas\[0\]"):
        TrainConfig(total_steps=1, batch_size=1, player_optim={"generator": {"adam_betas": (1.5, 0.9)}})
    from fastdiff.diffusion import create_gaussian_diffusion
    from fastdiff.models import MLPDenoiser
    from fastdiff.training import DiffusionObjective

    with pytest.raises(ValueError, match="single player"):
        Trainer(MLPDenoiser(2, width=8, depth=1), DiffusionObjective(create_gaussian_diffusion(steps=100)),
                TensorData(_data(64)), _config(tmp_path), tmp_path, device="cpu")
    with pytest.raises(TypeError, match="`discriminator` sub-module"):
        Trainer(MLPDenoiser(2, width=8, depth=1), SIDDMObjective(few_step_diffusion(2), nz=2),
                TensorData(_data(64)), _config(tmp_path), tmp_path, device="cpu")
