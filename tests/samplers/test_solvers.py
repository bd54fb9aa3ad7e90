"""The k-diffusion-style samplers on the one fused step (fastdiff.samplers.solvers / tables): whole loops against
k-diffusion's own functions, every backend, and mode coverage on the exact-score 25-Gaussian model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fastdiff.ops as ops
from fastdiff.data import grid25
from fastdiff.metrics.toy2d import mode_stats
from fastdiff.ops import table as T
from fastdiff.samplers import solvers, tables
from tests._kdiffusion import load_kdiffusion_sampling
from tests.ops._cases import backend_device

KD_SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_2s_ancestral"]
STOCHASTIC = {"euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_2s_ancestral"}


def _betas_ac(n: int = 1000) -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, n, dtype=torch.float64), 0)


class _ToyNet:
    """A fixed nonlinear network of (x, t): [N, C, H, W] -> [N, C, H, W] (C = 3)."""

    def __init__(self, seed: int = 0):
        self.w = torch.randn(3, 3, generator=torch.Generator().manual_seed(seed)) * 0.3

    def __call__(self, x, t, **kwargs):
        tt = (t.to(x.dtype) / 1000).reshape(-1, 1, 1, 1)
        w = self.w.to(device=x.device, dtype=x.dtype)
        return torch.tanh(torch.einsum("ij,njhw->nihw", w, x) * (1 + tt)) * 0.8 + 0.1 * x


def _noise_sampler(noises):
    it = iter(noises)
    return lambda sigma, sigma_next: next(it)


@pytest.fixture(scope="module")
def kdiffusion():
    module = load_kdiffusion_sampling()
    if module is None:
        pytest.skip("k-diffusion 0.1.1.post1 is not installed (make test installs it)")
    return module


def _both_loops(kdiffusion, name: str, model, den, steps: int, shape, seed: int, **ours):
    """(k-diffusion's sample_<name>, ours) from the same σ-space x_T and the same noise per step."""
    sigmas = torch.tensor(den.get_sigmas(steps), dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * sigmas[0]
    noises = [torch.randn(shape, generator=gen) for _ in range(steps)]
    kw = (lambda: {"noise_sampler": _noise_sampler(noises)}) if name in STOCHASTIC else dict
    expected = getattr(kdiffusion, f"sample_{name}")(model, x.clone(), sigmas, disable=True, **kw())
    actual = getattr(solvers, f"sample_{name}")(model, x.clone(), sigmas, disable=True, **ours, **kw())
    return expected, actual


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("name", KD_SAMPLERS)
def test_matches_kdiffusion(kdiffusion, name, prediction):
    """A whole 12-step loop equals k-diffusion's function of the same name (its own code running our denoiser's
    eager D, ours fusing the ε/v → D conversion into the step) within 1e-5 relative, fp32."""
    den = solvers.DiscreteVPDenoiser(_ToyNet(), _betas_ac(), prediction=prediction)
    expected, actual = _both_loops(kdiffusion, name, den, den, 12, (3, 3, 5, 5), 1, backend="reference")
    rel = float((actual - expected).norm() / expected.norm())
    assert rel <= 1e-5, f"{name}/{prediction}: relative error {rel:.2e}"
    assert float((actual - expected).abs().max()) <= 1e-5 * float(expected.abs().max()) * 4


@pytest.mark.parametrize("name", KD_SAMPLERS)
def test_plain_denoiser_matches_kdiffusion(kdiffusion, name):
    """A k-diffusion denoiser model(x, σ) -> D (prediction 'x0') runs unchanged."""
    den = solvers.DiscreteVPDenoiser(_ToyNet(1), _betas_ac(), prediction="epsilon")
    plain = lambda x, sigma, **kw: den(x, sigma, **kw)  # noqa: E731 (not a Denoiser: D comes out)
    expected, actual = _both_loops(kdiffusion, name, plain, den, 8, (2, 3, 4, 4), 2)
    assert float((actual - expected).norm() / expected.norm()) <= 1e-5


@pytest.mark.parametrize("backend", ["cpu", "triton", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", KD_SAMPLERS + ["unipc", "flow_euler"])
def test_fused_backends_match_reference(backend, name):
    """The same loop on every fused backend equals the reference backend; in-kernel noise from one seed."""
    status = ops.available_backends()[backend]
    assert status.available, f"backend {backend!r} is not available: {status.reason}"
    device = backend_device(backend)
    den = solvers.DiscreteVPDenoiser(_ToyNet(), _betas_ac(), prediction="epsilon")
    sigmas = den.get_sigmas(6)
    if name == "flow_euler":
        den, sigmas = _ToyNet(), np.linspace(1.0, 0.0, 7)
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 3, 5, 7, generator=gen) * float(sigmas[0])).to(device)
    fn = getattr(solvers, f"sample_{name}")
    seed = {"seed": 7} if name in STOCHASTIC else {}
    ref = fn(den, x.clone(), sigmas, disable=True, backend="reference", **seed)
    out = fn(den, x.clone(), sigmas, disable=True, backend=backend, **seed)
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5 * float(ref.abs().max()))


class _MixtureDenoiser(solvers.Denoiser):
    """The exact ε-predictor of a Gaussian mixture in σ-space: the network input is x/√(σ²+1) at ᾱ = 1/(σ²+1)."""

    prediction = "epsilon"

    def __init__(self, mixture):
        super().__init__(self._eps)
        self.mixture = mixture

    def _eps(self, x, sigma, **kwargs):
        return self.mixture.eps_posterior_mean(x, (1.0 / (1.0 + sigma.double() ** 2)).clamp(1e-12, 1.0))

    def model_inputs(self, sigmas):
        return 1.0 / np.sqrt(np.asarray(sigmas) ** 2 + 1.0), np.asarray(sigmas)


def _flow_velocity(mixture):
    """The exact velocity ε − x0 of rectified flow x = (1 − s)x0 + sε for a Gaussian mixture."""
    def velocity(x, s, **kwargs):
        s = s.double().reshape(-1, 1)
        norm = torch.sqrt((1 - s) ** 2 + s ** 2)
        ab = (((1 - s) / norm) ** 2).clamp(1e-12, 1.0).reshape(-1)
        x0 = mixture.x0_posterior_mean(x / norm.to(x.dtype), ab).double()
        return ((x.double() - x0) / s.clamp_min(1e-12)).to(x.dtype)
    return velocity


@pytest.mark.parametrize("name", KD_SAMPLERS + ["unipc", "flow_euler"])
def test_recovers_all_25_modes(name):
    """At 20 steps on Karras σ's (flow: uniform s) each sampler puts ≥ 10 % of a mode's share within 3 std of
    each of the 25 modes (DPM-Solver++ 3M SDE needs them: at 15 steps it covers 1–2 modes, k-diffusion's too)."""
    mixture = grid25()
    gen = torch.Generator().manual_seed(4)
    if name == "flow_euler":
        model, sigmas = _flow_velocity(mixture), np.linspace(1.0, 0.0, 21)
        x = torch.randn(2000, 2, generator=gen)
    else:
        model = _MixtureDenoiser(mixture)
        sigmas = np.append((80 ** (1 / 7) + np.linspace(0, 1, 20) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7, 0.0)
        x = torch.randn(2000, 2, generator=gen) * sigmas[0]
    out = getattr(solvers, f"sample_{name}")(model, x, sigmas, disable=True, seed=5 if name in STOCHASTIC else None)
    stats = mode_stats(out, mixture)
    assert stats.all_covered and stats.nonfinite == 0, (name, stats.to_dict())


def test_one_launch_per_model_evaluation():
    """Every row of every builder's table is one model evaluation: Heun and 2S-ancestral spend two per step
    (except the final Euler step), all others one; history stays within the op's slots."""
    sig = solvers.DiscreteVPDenoiser(_ToyNet(), _betas_ac()).get_sigmas(10)
    for name, builder in solvers.BUILDERS.items():
        tab = builder(sig)
        per_step = np.bincount(tab.step)
        assert tab.history <= T.MAX_HISTORY
        if name in ("heun", "dpmpp_2s_ancestral"):
            assert (per_step[:-1] == 2).all() and per_step[-1] == 1, name
        else:
            assert (per_step == 1).all(), name
        assert ops.sampler_step is not None


def test_cfg_scale_per_step_is_a_table_column():
    """Guidance as a table column: a per-step scale (e.g. a guidance interval) costs no host work per step and
    equals combining the two outputs by hand (one doubled-batch evaluation each step)."""
    inner = _ToyNet()
    calls = []

    def net(x_in, t, shift=0.0):
        calls.append(x_in.shape[0])
        return inner(x_in, t) + shift

    den = solvers.DiscreteVPDenoiser(net, _betas_ac())
    sigmas = den.get_sigmas(5)
    scales = [1.0, 3.0, 3.0, 1.0, 1.0]
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(6)) * float(sigmas[0])
    shift = torch.full((2, 1, 1, 1), 0.1)
    out = solvers.sample_euler(den, x.clone(), sigmas, extra_args={"shift": shift}, uncond_args={"shift": -shift},
                               cfg_scale=scales, disable=True)
    assert calls == [4] * 5
    manual = x.clone()
    for i in range(5):
        t = torch.tensor(den.sigma_to_t(sigmas[i:i + 1])).expand(2)
        eps_c = inner(manual / float(np.sqrt(sigmas[i] ** 2 + 1)), t) + 0.1
        eps = (eps_c - 0.2) + scales[i] * 0.2
        d = manual - float(sigmas[i]) * eps
        manual = float(sigmas[i + 1] / sigmas[i]) * manual + (1 - float(sigmas[i + 1] / sigmas[i])) * d
    torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-5 * float(manual.abs().max()))


def test_bad_sigmas_name_the_argument():
    with pytest.raises(ValueError, match="sigmas must be finite, >= 0 and strictly decreasing"):
        tables.dpmpp_2m([1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="sigmas must be a 1-D schedule"):
        tables.euler([1.0])
    with pytest.raises(ValueError, match="cfg_scale must be a number or one value per step"):
        tables.euler([2.0, 1.0, 0.0], cfg_scale=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="solver_type"):
        tables.dpmpp_2m_sde([2.0, 1.0, 0.0], solver_type="rk4")
    with pytest.raises(ValueError, match="cfg_scale needs uncond_args"):
        solvers.sample_euler(lambda x, s: x, torch.zeros(1, 1, 2), [2.0, 0.0], cfg_scale=2.0)


def test_cfg_pp_renoises_with_the_unconditional_eps():
    """CFG++ Euler (Chung et al. 2024): x_next = D_λ + σ_next·ε̂_u, the guided D with the unconditional ε."""
    inner = _ToyNet(2)
    shift = torch.full((2, 1, 1, 1), 0.1)
    den = solvers.DiscreteVPDenoiser(lambda x, t, shift: inner(x, t) + shift, _betas_ac())
    sigmas = den.get_sigmas(4)
    lam = 0.6
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(7)) * float(sigmas[0])
    out = solvers.sample_euler(den, x.clone(), sigmas, extra_args={"shift": shift}, uncond_args={"shift": -shift},
                               cfg_scale=lam, cfg_pp=True, disable=True, backend="reference")
    manual = x.clone()
    for i in range(4):
        t = torch.tensor(den.sigma_to_t(sigmas[i:i + 1])).expand(2)
        eps_u = inner(manual / float(np.sqrt(sigmas[i] ** 2 + 1)), t) - shift
        eps = eps_u + lam * 2 * shift
        d = manual - float(sigmas[i]) * eps
        manual = d + float(sigmas[i + 1]) * eps_u
    torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-5 * float(manual.abs().max()))
    with pytest.raises(ValueError, match="cfg_pp"):
        solvers.sample_euler(den, x, sigmas, extra_args={"shift": shift}, cfg_pp=True)


def test_cfg_rescale_is_diffusers_rescale_noise_cfg():
    """Guidance rescale (Lin et al. 2023 eq. 16): the step's combine of the rescaled outputs equals diffusers'
    rescale_noise_cfg of the guided output; a whole loop with φ = 0.7 differs from φ = 0."""
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    gen = torch.Generator().manual_seed(8)
    o_c, o_u = torch.randn(3, 4, 5, 5, generator=gen), torch.randn(3, 4, 5, 5, generator=gen) * 0.5
    a, b = solvers.rescale_outputs(o_c, o_u, 5.0, 0.7, 4)
    torch.testing.assert_close(b + 5.0 * (a - b), rescale_noise_cfg(o_u + 5.0 * (o_c - o_u), o_c, 0.7))
    den = solvers.DiscreteVPDenoiser(lambda x, t, s: _ToyNet()(x, t) * s, _betas_ac())
    sig = den.get_sigmas(4)
    x = torch.randn(3, 3, 4, 4, generator=gen) * float(sig[0])
    scale = torch.ones(3, 1, 1, 1)
    run = lambda phi: solvers.sample_dpmpp_2m(den, x, sig, {"s": scale}, uncond_args={"s": scale / 2},  # noqa: E731
                                              cfg_scale=3.0, cfg_rescale=phi, disable=True, backend="reference")
    plain, rescaled = run(0.0), run(0.7)
    assert (rescaled - plain).abs().max() > 1e-2 * plain.abs().max()


def test_lcm_recovers_all_25_modes():
    """LCM multistep sampling (`tables.lcm`) with the exact ε of the 25-Gaussian grid at 20 steps covers every
    mode. (It is built for consistency-distilled models: with this ε, 10 steps cover 1 mode and 15 cover 17.)"""
    ac = _betas_ac().numpy()
    mixture = grid25()
    x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    out = solvers.sample_lcm(mixture.eps_model(ac), x, list(np.linspace(999, 0, 20).round().astype(int)),
                             alphas_cumprod=ac, seed=1, disable=True)
    stats = mode_stats(out, mixture)
    assert stats.all_covered and stats.nonfinite == 0, stats.to_dict()
