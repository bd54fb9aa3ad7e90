"""DiffusionObjective: every objective's loss falls on a tiny run; label dropout; draws; argument checks."""
from __future__ import annotations

import pytest
import torch

from fastdiff.diffusion import LossSecondMomentResampler, UniformSampler
from fastdiff.training import DiffusionObjective, sample_timesteps


def _run(objective, model, data, steps=48, batch=16, lr=2e-3, seed=0):
    """Plain AdamW loop over objective(...): the per-step losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for i in range(steps):
        idx = torch.randint(0, data.x.shape[0], (batch,), generator=g)
        y = None if data.y is None else data.y[idx]
        loss, terms = objective(model, data.x[idx], y, g)
        assert set(terms) >= {"loss"} and all(v.dim() == 0 for v in terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _assert_falls(losses, k=8, factor=0.8):
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    assert last < factor * first, f"loss did not fall: first {k} mean {first:.4f}, last {k} mean {last:.4f}"


def test_l_simple_falls(make_unet, make_diffusion, make_dataset):
    """DDPM L_simple: MSE on ε with fixed variance, linear schedule."""
    obj = DiffusionObjective(make_diffusion(loss="mse", var="fixed_small", schedule="linear"), "uniform")
    losses = _run(obj, make_unet(), make_dataset())
    _assert_falls(losses)


def test_hybrid_learned_range_falls(make_unet, make_diffusion, make_dataset):
    """Improved DDPM L_hybrid: RESCALED_MSE + learned-range Σ, cosine schedule; both terms are reported."""
    obj = DiffusionObjective(make_diffusion(loss="rescaled_mse", var="learned_range", schedule="cosine"), "uniform")
    model = make_unet(learn_sigma=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    data = make_dataset()
    losses, vbs = [], []
    for _ in range(48):
        idx = torch.randint(0, 64, (16,), generator=g)
        loss, terms = obj(model, data.x[idx], None, g)
        assert {"mse", "vb", "loss"} <= set(terms)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        vbs.append(float(terms["vb"]))
    _assert_falls(losses)
    assert all(v >= 0 for v in vbs)


def test_l_vlb_with_loss_second_moment_falls(make_unet, make_diffusion, make_dataset):
    """L_vlb alone (KL) with importance-sampled t: the sampler warms up and leaves uniform; the loss falls."""
    diffusion = make_diffusion(loss="kl", var="learned_range", steps=20)
    sampler = LossSecondMomentResampler(diffusion, history_per_term=2)
    obj = DiffusionObjective(diffusion, sampler)
    losses = _run(obj, make_unet(learn_sigma=True), make_dataset(), steps=60)
    assert sampler._warmed_up()
    w = sampler.weights()
    assert w.max() / w.min() > 1.5, "loss-second-moment weights stayed uniform"
    _assert_falls(losses, k=10)


def test_class_conditional_falls(make_unet, make_diffusion, make_dataset):
    obj = DiffusionObjective(make_diffusion(), "uniform", num_classes=4)
    assert obj.model_num_classes == 4 and obj.null_class is None
    _assert_falls(_run(obj, make_unet(num_classes=4), make_dataset(num_classes=4)))


def test_classifier_free_falls(make_unet, make_diffusion, make_dataset):
    obj = DiffusionObjective(make_diffusion(), "uniform", num_classes=4, p_uncond=0.2)
    assert obj.model_num_classes == 5 and obj.null_class == 4
    _assert_falls(_run(obj, make_unet(num_classes=obj.model_num_classes), make_dataset(num_classes=4)))


def test_label_dropout_share(make_diffusion):
    """The share of labels replaced by the null class ≈ p_uncond (binomial 5σ band); others are untouched."""
    p, n = 0.3, 20_000
    obj = DiffusionObjective(make_diffusion(steps=10), num_classes=7, p_uncond=p)
    g = torch.Generator().manual_seed(123)
    y = torch.randint(0, 7, (n,), generator=g)
    draw = obj.draw(n, (1, 2, 2), g)
    seen = obj.labels(y, draw.drop)
    null = seen == 7
    share = null.float().mean().item()
    assert abs(share - p) < 5 * (p * (1 - p) / n) ** 0.5
    assert torch.equal(seen[~null], y[~null])
    assert torch.equal(null, draw.drop)


def test_model_sees_null_labels(make_unet, make_diffusion, make_dataset):
    """The labels reaching the model are y with dropped rows set to num_classes."""
    obj = DiffusionObjective(make_diffusion(steps=10), num_classes=4, p_uncond=0.5)
    seen = []
    model = make_unet(num_classes=5)
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["y"].clone()), with_kwargs=True)
    data = make_dataset(num_classes=4)
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    obj(model, data.x[:32], data.y[:32], g)
    g.set_state(state)
    draw = obj.draw(32, tuple(data.x.shape[1:]), g)
    expected = torch.where(draw.drop, torch.full_like(data.y[:32], 4), data.y[:32])
    assert torch.equal(seen[0], expected) and 0 < int((seen[0] == 4).sum()) < 32


def test_draw_is_reproducible_and_shards(make_diffusion):
    obj = DiffusionObjective(make_diffusion(steps=50), num_classes=3, p_uncond=0.1)
    a = obj.draw(12, (1, 4, 4), torch.Generator().manual_seed(9))
    b = obj.draw(12, (1, 4, 4), torch.Generator().manual_seed(9))
    assert torch.equal(a.t, b.t) and torch.equal(a.noise, b.noise) and torch.equal(a.drop, b.drop)
    s = a.shard(4, 8)
    assert torch.equal(s.t, a.t[4:8]) and torch.equal(s.noise, a.noise[4:8]) and len(s) == 4
    assert a.t.dtype == torch.int64 and int(a.t.min()) >= 0 and int(a.t.max()) < 50
    with pytest.raises(ValueError, match="shard"):
        a.shard(8, 13)


def test_sample_timesteps_importance_weights(make_diffusion):
    """p_t ∝ w_t: frequencies follow the weights and 1/(T p_t) is returned (E[weight] = 1)."""
    diffusion = make_diffusion(steps=4)

    class Fixed(UniformSampler):
        def weights(self):
            import numpy as np
            return np.array([1.0, 2.0, 3.0, 4.0])

    g = torch.Generator().manual_seed(0)
    t, w = sample_timesteps(Fixed(diffusion), 40_000, g)
    freq = torch.bincount(t, minlength=4).double() / 40_000
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), atol=0.01)
    assert torch.allclose(w, 1.0 / (4 * torch.tensor([0.1, 0.2, 0.3, 0.4])[t]), rtol=1e-6)
    assert abs(w.double().mean().item() - 1.0) < 0.02


def test_sampler_state_round_trip(make_diffusion):
    diffusion = make_diffusion(steps=5)
    a = DiffusionObjective(diffusion, LossSecondMomentResampler(diffusion, history_per_term=2))
    a.update_sampler(torch.tensor([0, 1, 1, 4]), torch.rand(4, generator=torch.Generator().manual_seed(0)))
    b = DiffusionObjective(diffusion, "loss-second-moment")
    b.sampler.history_per_term = 2
    b.sampler._loss_history = b.sampler._loss_history[:, :2]
    b.load_state_dict(a.state_dict())
    assert (b.sampler._loss_counts == a.sampler._loss_counts).all()
    assert (b.sampler._loss_history == a.sampler._loss_history).all()
    with pytest.raises(ValueError, match="keys"):
        b.load_state_dict({})


@pytest.mark.parametrize("kwargs, match", [
    ({"p_uncond": 1.0, "num_classes": 3}, "p_uncond"),
    ({"p_uncond": -0.1, "num_classes": 3}, "p_uncond"),
    ({"p_uncond": 0.1}, "needs num_classes"),
    ({"num_classes": 0}, "num_classes"),
    ({"schedule_sampler": "nope"}, "name must be one of"),
])
def test_bad_arguments(make_diffusion, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        DiffusionObjective(make_diffusion(steps=10), **kwargs)


def test_bad_labels(make_unet, make_diffusion, make_dataset):
    obj = DiffusionObjective(make_diffusion(steps=10), num_classes=4)
    data = make_dataset(8, num_classes=4)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="y .class labels. is required"):
        obj(make_unet(num_classes=4), data.x, None, g)
    with pytest.raises(ValueError, match=r"y must lie in \[0, num_classes=4\)"):
        obj(make_unet(num_classes=4), data.x, data.y + 4, g)
