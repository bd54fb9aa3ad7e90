"""Guidance (classifier-free, classifier, discriminator) on the fused samplers, checked on exactly known 2-D
mixtures: the exact noisy classifier steers samples into the target class, the exact density-ratio discriminator
turns a wrong score into the true one, one-step updates match the equations, composed guidance is the sum of
its parts, and bad input fails before sampling starts."""
import dataclasses

import numpy as np
import pytest
import torch

from fastdiff import ops, samplers
from fastdiff.data.toy import GaussianMixture
from fastdiff.samplers._loop import prepare_timesteps
from fastdiff.samplers.guidance import (
    ClassifierFree,
    ClassifierGuidance,
    DiscriminatorGuidance,
    GuidanceSpec,
)

BETAS = np.linspace(1e-4, 0.02, 1000)
AC = np.cumprod(1 - BETAS)
AC_T = torch.tensor(AC)
TWO = GaussianMixture(means=[[-2.0, 0.0], [2.0, 0.0]], std=0.3)       # the data; component k = class k
SKEWED = GaussianMixture(means=[[-2.0, 0.0], [2.0, 0.0]], std=0.3, weights=[0.9, 0.1])


class MixtureClassifier(torch.nn.Module):
    """The exact noisy classifier of TWO: logits log w_k + log N_t(x; component k), so softmax = p(k | x_t)."""

    out_channels = 2

    def forward(self, x, t):
        return TWO.component_log_prob(x, AC_T[t])


class RatioDiscriminator(torch.nn.Module):
    """The optimal discriminator of diffused TWO (real) vs diffused SKEWED (generated): its logit is
    log p_real^t(x) − log p_gen^t(x), i.e. d = p_real / (p_real + p_gen)."""

    def forward(self, x, t):
        return TWO.log_prob(x, AC_T[t]) - SKEWED.log_prob(x, AC_T[t])


class LinearClassifier(torch.nn.Module):
    """logits = x W: ∇ₓ log softmax_y = W[:, y] − W softmax(xW), in closed form."""

    out_channels = 3

    def __init__(self, dim):
        super().__init__()
        self.w = torch.randn(dim, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def forward(self, x, t):
        return x.double().flatten(1) @ self.w

    def grad(self, x, y):
        p = torch.softmax(x.double().flatten(1) @ self.w, dim=1)
        return (self.w[:, y].T - p @ self.w.T).view_as(x)


def _noise(n, seed=0, shape=(2,)):
    return ops.randn_like(torch.empty(n, *shape), seed=seed)


def _first_step(kind, model, x, guidance, labels=None, extra=None, **kw):
    steps = getattr(samplers, f"{kind}_steps")(model, x, [0, 500], extra, alphas_cumprod=AC, guidance=guidance,
                                               labels=labels, disable=True, **kw)
    return next(steps)["x"]


@pytest.mark.parametrize("kind, ts", [("ddpm", range(0, 1000, 5)), ("ddim", range(0, 1000, 20))])
def test_exact_classifier_guidance_samples_the_target_class(kind, ts):
    n = 400
    y = torch.arange(n) % 2
    x = _noise(n)
    eps = TWO.eps_model(AC)
    sample = getattr(samplers, f"sample_{kind}")
    kw = {"seed": 3} if kind == "ddpm" else {}
    plain = sample(eps, x, ts, alphas_cumprod=AC, disable=True, **kw)
    guided = sample(eps, x, ts, alphas_cumprod=AC, disable=True, labels=y,
                    guidance=[ClassifierGuidance(MixtureClassifier(), 1.0)], **kw)
    in_class = lambda s: float(((s[:, 0] > 0).long() == y).float().mean())  # noqa: E731
    assert 0.35 < in_class(plain) < 0.65            # unguided: either component, whatever the label
    assert in_class(guided) > 0.98                  # p(x) p(y | x) ∝ p(x | y): the labelled component
    assert float(guided[:, 0].abs().mean()) == pytest.approx(2.0, abs=0.15)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_exact_discriminator_turns_the_wrong_score_into_the_true_one(kind):
    x = _noise(128, seed=1)
    ts = range(0, 1000, 20)
    kw = {"seed": 5} if kind == "ddpm" else {}
    sample = getattr(samplers, f"sample_{kind}")
    true = sample(TWO.eps_model(AC), x, ts, alphas_cumprod=AC, disable=True, **kw)
    wrong = sample(SKEWED.eps_model(AC), x, ts, alphas_cumprod=AC, disable=True, **kw)
    corrected = sample(SKEWED.eps_model(AC), x, ts, alphas_cumprod=AC, disable=True,
                       guidance=[DiscriminatorGuidance(RatioDiscriminator(), 1.0)], **kw)
    torch.testing.assert_close(corrected, true, atol=2e-4, rtol=1e-4)
    assert (wrong - true).abs().max() > 0.5       # the correction did real work
    assert float((wrong[:, 0] > 0).float().mean()) < 0.25 and float((corrected[:, 0] > 0).float().mean()) > 0.4


def test_classifier_guidance_one_step_matches_the_equations():
    """DDIM: ε̂ = ε − s √(1 − ᾱ_t) ∇ log p(y | x_t); DDPM: x_{t−1} + s Σ_t ∇ log p(y | x_t) (guided-diffusion)."""
    clf = LinearClassifier(2 * 4)
    x = _noise(6, shape=(2, 4))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    model = lambda x, t: 0.3 * x  # noqa: E731
    s, t = 2.5, 500
    g = clf.grad(x, y).float()
    table, rows, _, _ = prepare_timesteps([0, 500], AC, x)
    k = float(np.sqrt(1 - AC[t]))
    got = _first_step("ddim", model, x, [ClassifierGuidance(clf, s)], labels=y)
    want = ops.ddim_step(x, 0.3 * x - s * k * g, table, rows[1])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    beta = 1 - AC[t] / AC[0]                          # the respaced step 500 -> 0
    for var_type, sigma in (("fixed_small", beta * (1 - AC[0]) / (1 - AC[t])), ("fixed_large", beta)):
        got = _first_step("ddpm", model, x, [ClassifierGuidance(clf, s)], labels=y, seed=9, var_type=var_type)
        plain = _first_step("ddpm", model, x, [], seed=9, var_type=var_type)
        torch.testing.assert_close(got, plain + s * sigma * g, atol=1e-5, rtol=1e-4)
    # Sign: the guided step raises log p(y | x).
    logp = lambda z: torch.log_softmax(clf(z, None), 1).gather(1, y[:, None]).sum()  # noqa: E731
    assert logp(_first_step("ddim", model, x, [ClassifierGuidance(clf, 4.0)], labels=y)) > logp(
        _first_step("ddim", model, x, [], labels=y))


def test_composed_guidance_is_the_sum_of_its_parts():
    """cfg w, cg s1, dg s2 in one DDIM step = the closed form with ε̂ = ε_u + (1+w)(ε_c − ε_u) − √(1−ᾱ)(s1 g1 + s2 g2)."""
    clf, disc_clf = LinearClassifier(2), LinearClassifier(2)
    disc = lambda x, t: disc_clf(x, t)[:, 1] - disc_clf(x, t)[:, 0]  # noqa: E731  a logit
    x = _noise(5, seed=4)
    y = torch.tensor([0, 1, 2, 1, 0])
    null = torch.full_like(y, 3)
    model = lambda x, t, y: 0.2 * x + 0.05 * y[:, None].float()  # noqa: E731
    w, s1, s2, t = 2.0, 1.5, 0.7, 500
    terms = [ClassifierFree(w, {"y": null}), ClassifierGuidance(clf, s1), DiscriminatorGuidance(disc, s2)]
    got = _first_step("ddim", model, x, terms, labels=y, extra={"y": y})
    xd = x.double()
    g2 = torch.autograd.functional.jacobian(lambda z: disc(z, None).sum(), xd)
    eps_c, eps_u = 0.2 * xd + 0.05 * y[:, None], 0.2 * xd + 0.05 * 3
    eps = eps_u + (1 + w) * (eps_c - eps_u) - np.sqrt(1 - AC[t]) * (s1 * clf.grad(xd, y) + s2 * g2)
    x0 = (xd - np.sqrt(1 - AC[t]) * eps) / np.sqrt(AC[t])
    want = np.sqrt(AC[0]) * x0 + np.sqrt(1 - AC[0]) * eps
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)
    # ... and each part alone moves the step by its own share (the DDIM step is affine in ε̂).
    base = _first_step("ddim", model, x, [], extra={"y": y})
    parts = [_first_step("ddim", model, x, [g], labels=y, extra={"y": y}) - base for g in terms]
    torch.testing.assert_close(got - base, sum(parts), atol=2e-5, rtol=1e-4)


def test_cfg_is_one_batched_forward_only_inside_its_interval():
    calls = []

    def model(x, t, y):
        calls.append((x.shape[0], int(t[0])))
        return 0.1 * x + 0.01 * y[:, None, None].float()

    x = _noise(3, shape=(2, 2))
    y = torch.tensor([0, 1, 2])
    cfg = ClassifierFree(2.0, {"y": torch.full_like(y, 3)}, t_range=(500, 999))
    out = samplers.sample_ddim(model, x, range(0, 1000, 100), {"y": y}, alphas_cumprod=AC, guidance=[cfg],
                               disable=True)
    assert calls == [(6 if t >= 500 else 3, t) for t in range(900, -1, -100)]
    calls.clear()
    legacy = samplers.sample_ddim(model, x, range(0, 1000, 100), {"y": y}, alphas_cumprod=AC, guidance_scale=3.0,
                                  uncond_args={"y": torch.full_like(y, 3)}, disable=True)
    assert not torch.allclose(out, legacy)  # outside the interval w = 0, the plain conditional step
    assert [c[0] for c in calls] == [6] * 10


def test_schedules_and_intervals():
    g = ClassifierGuidance(LinearClassifier(2), 2.0, t_range=(100, 800), schedule="increasing")
    assert [g.weight(t, 1001) for t in (0, 99, 100, 500, 800, 801)] == pytest.approx([0, 0, 0.2, 1.0, 1.6, 0])
    d = DiscriminatorGuidance(lambda x, t: x[:, 0], 1.0, schedule="decreasing")
    assert d.weight(0, 11) == 1.0 and d.weight(10, 11) == 0.0 and d.weight(5, 11) == pytest.approx(0.5)
    c = DiscriminatorGuidance(lambda x, t: x[:, 0], 3.0, schedule=lambda t, T: t % 2)
    assert (c.weight(3, 10), c.weight(4, 10)) == (3.0, 0.0)
    assert GuidanceSpec.parse("dg=1.5,t=10:20,schedule=decreasing") == GuidanceSpec("dg", 1.5, (10, 20), "decreasing")
    assert GuidanceSpec.parse("3") == GuidanceSpec("cfg", 3.0)


def _never_called(x, t, **kw):
    raise AssertionError("the model ran before the bad input was reported")


@pytest.mark.parametrize("make, match", [
    (lambda: ClassifierGuidance(MixtureClassifier(), -1.0), "scale must be a finite number >= 0"),
    (lambda: DiscriminatorGuidance(RatioDiscriminator(), float("nan")), "dg guidance scale"),
    (lambda: ClassifierFree(1.0, {}), "needs uncond_args"),
    (lambda: ClassifierGuidance(None, 1.0), "needs a classifier"),
    (lambda: ClassifierGuidance(MixtureClassifier(), 1.0, t_range=(5, 1)), "t_range"),
    (lambda: DiscriminatorGuidance(RatioDiscriminator(), 1.0, schedule="cosine"), "schedule must be one of"),
    (lambda: GuidanceSpec.parse("xg=2"), "kind must be one of"),
    (lambda: GuidanceSpec.parse("cg=2,t=a:b"), "t must be LO:HI"),
])
def test_bad_guidance_terms(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("kwargs, match", [
    ({"guidance": [ClassifierGuidance(MixtureClassifier(), 1.0)]}, "cg guidance needs labels"),
    ({"guidance": [ClassifierGuidance(MixtureClassifier(), 1.0)], "labels": torch.tensor([0, 2])},
     r"cg labels must lie in \[0, 2\)"),
    ({"guidance": [ClassifierGuidance(MixtureClassifier(), 1.0)], "labels": torch.tensor([0.0, 1.0])}, "int64"),
    ({"guidance": [ClassifierGuidance(MixtureClassifier(), 1.0)], "labels": torch.tensor([0, 1]),
      "prediction": "x0"}, "prediction='epsilon'"),
    ({"guidance": [ClassifierFree(1.0, {"y": 0}), ClassifierFree(2.0, {"y": 0})]}, "at most one"),
    ({"guidance": [ClassifierFree(1.0, {"y": 0})], "guidance_scale": 2.0, "uncond_args": {"y": 0}}, "either"),
])
def test_bad_sampler_guidance_fails_before_the_model_runs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        samplers.sample_ddim(_never_called, _noise(2), range(0, 1000, 100), alphas_cumprod=AC, disable=True,
                             **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"guidance": "cg=1", "labels": torch.tensor([0, 1])}, "needs a noisy classifier"),
    ({"guidance": ["dg=1"]}, "needs a discriminator"),
    ({"guidance": "cfg=2", "labels": torch.tensor([0, 1])}, "null_label"),
    ({"guidance": -1.0}, "guidance must be >= 0"),
    ({"guidance": ["cg=1", "cg=2"], "classifier": MixtureClassifier(), "labels": torch.tensor([0, 1])},
     "once"),
    ({"labels": torch.tensor([0, 4]), "null_label": 3}, r"labels must lie in \[0, 3\)"),
    ({"labels": torch.tensor([0, 1, 1])}, r"labels must be int64 \[2\]"),
])
def test_bad_generate_arguments(kwargs, match):
    options = samplers.SamplerOptions(steps=10)
    with pytest.raises(ValueError, match=match):
        if "guidance" in kwargs:
            options = dataclasses.replace(options, guidance=kwargs.pop("guidance"))
        samplers.generate(_never_called, AC, 2, (2,), options, **kwargs)


def test_generate_classifier_guides_an_unconditional_model():
    y = torch.arange(100) % 2
    options = samplers.SamplerOptions(steps=50, guidance="cg=1", batch_size=64)
    out = samplers.generate(TWO.eps_model(AC), AC, 100, (2,), options, labels=y, conditional=False,
                            classifier=MixtureClassifier())
    assert float(((out[:, 0] > 0).long() == y).float().mean()) > 0.98


def test_composed_guidance_drives_a_patched_diffusers_unet():
    """A class-conditional diffusers UNet2DModel (fastdiff-patched) under cfg + cg + dg in one DDIM call: the
    batched cfg forward passes both label sets through `class_labels`, and the result equals the closed form
    built from separate forward passes."""
    diffusers = pytest.importorskip("diffusers")
    import fastdiff

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 32),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                 num_class_embeds=4).eval()
    fastdiff.patch(unet)
    model = lambda x, t, y: unet(x, t, class_labels=y).sample  # noqa: E731
    clf, disc_clf = LinearClassifier(64), LinearClassifier(64)
    disc = lambda x, t: disc_clf(x, t)[:, 0]  # noqa: E731
    x = _noise(3, seed=6, shape=(1, 8, 8))
    y, null = torch.tensor([0, 1, 2]), torch.full((3,), 3)
    w, s1, s2, t = 1.5, 2.0, 0.5, 500
    terms = [ClassifierFree(w, {"y": null}), ClassifierGuidance(clf, s1), DiscriminatorGuidance(disc, s2)]
    with torch.no_grad():
        got = _first_step("ddim", model, x, terms, labels=y, extra={"y": y})
        tt = torch.full((3,), t)
        eps_c, eps_u = model(x, tt, y).double(), model(x, tt, null).double()
    xd = x.double()
    g2 = torch.autograd.functional.jacobian(lambda z: disc(z, None).sum(), xd)
    eps = eps_u + (1 + w) * (eps_c - eps_u) - np.sqrt(1 - AC[t]) * (s1 * clf.grad(xd, y) + s2 * g2)
    want = np.sqrt(AC[0]) * (xd - np.sqrt(1 - AC[t]) * eps) / np.sqrt(AC[t]) + np.sqrt(1 - AC[0]) * eps
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
