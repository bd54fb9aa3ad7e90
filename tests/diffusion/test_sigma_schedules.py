"""fastdiff.schedules' σ, VP ↔ σ, timestep-spacing and flow-matching schedules against the real code of the peers:
k-diffusion 0.1.1.post1's sampling.py / external.py (loaded by tests/_kdiffusion.py; skipped without the wheel) and
diffusers' schedulers (set_timesteps output and the private helpers it uses).

Tolerances: against a float64 peer (k-diffusion run with torch's default dtype float64, diffusers' numpy helpers)
1e-12 relative; against diffusers' float32 set_timesteps output 1e-6 relative; against k-diffusion run in float32
1e-5 (its own rounding, see F32_KD); timestep lists exactly.
"""
from __future__ import annotations

import ast
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastdiff import schedules as S
from tests._kdiffusion import (
    kdiffusion_external_or_skip,
    kdiffusion_sampling_or_skip,
    load_kdiffusion_sampling,
)

try:
    import diffusers
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
    )
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale
except ImportError:  # pragma: no cover - diffusers is a dev dependency
    diffusers = None

# diffusers' EulerDiscreteScheduler calls np.array on a tensor (numpy 2 warns about torch's __array__): not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
needs_diffusers = pytest.mark.skipif(diffusers is None, reason="diffusers is not installed")

F32 = dict(rtol=1e-6, atol=0)
F64 = dict(rtol=1e-12, atol=0)
# k-diffusion in float32 is itself off by up to 70 float32 ulps (8.3e-6, measured): Karras' σ^{1/ρ} ramp cancels
# near σ_min ((σ_max/σ_min)^{1/ρ} ≈ 34 for EDM's range at ρ = 3) and the power ρ multiplies that; exponential and
# polyexponential stay within 11 ulps (1.3e-6). The float64 run of the same code is the parity check.
F32_KD = dict(rtol=1e-5, atol=0)

# (n, sigma_min, sigma_max): SD's range, EDM's, a short and a prime count, one step
SIGMA_CASES = [(10, 0.0292, 14.6146), (25, 0.002, 80.0), (7, 0.1, 10.0), (2, 0.03, 14.6), (1, 0.5, 3.0)]
KD_NAMES = {"karras": "get_sigmas_karras", "exponential": "get_sigmas_exponential",
            "polyexponential": "get_sigmas_polyexponential"}


def _ours(kind: str, n, lo, hi, **kw) -> np.ndarray:
    return getattr(S, KD_NAMES[kind])(n, lo, hi, **kw)


@pytest.fixture
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# ------------------------------------------------------------------------------------- σ schedules


@pytest.mark.parametrize("kind,kw", [("karras", {}), ("karras", {"rho": 3.0}), ("exponential", {}),
                                     ("polyexponential", {}), ("polyexponential", {"rho": 2.5})])
@pytest.mark.parametrize("n,lo,hi", SIGMA_CASES)
def test_sigma_schedules_match_kdiffusion(kind, kw, n, lo, hi, float64_default):
    kd = kdiffusion_sampling_or_skip()
    ours = _ours(kind, n, lo, hi, **kw)
    ref64 = getattr(kd, KD_NAMES[kind])(n, lo, hi, **kw)  # torch's default dtype is float64 here
    assert ref64.dtype == torch.float64
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float64 and ours.shape == (n + 1,)
    np.testing.assert_allclose(ours, ref64.numpy(), **F64)
    torch.set_default_dtype(torch.float32)  # k-diffusion as it usually runs: its own float32 rounding dominates
    ref32 = getattr(kd, KD_NAMES[kind])(n, lo, hi, **kw)
    assert ref32.dtype == torch.float32
    np.testing.assert_allclose(ours, ref32.double().numpy(), **F32_KD)
    assert ours[-1] == 0 and ours[0] == pytest.approx(hi, rel=1e-14)
    assert np.all(np.diff(ours) < 0)
    if n > 1:
        assert ours[-2] == pytest.approx(lo, rel=1e-13)


def test_polyexponential_with_rho_1_is_exponential(rng):
    lo, hi = sorted(rng.uniform(0.01, 50.0, 2))
    np.testing.assert_allclose(S.get_sigmas_polyexponential(13, lo, hi), S.get_sigmas_exponential(13, lo, hi), **F64)


@needs_diffusers
@pytest.mark.parametrize("kind", ["karras", "exponential", "beta"])
@pytest.mark.parametrize("n,lo,hi", SIGMA_CASES)
def test_sigma_schedules_match_diffusers_helpers(kind, n, lo, hi):
    """diffusers' `_convert_to_*` take σ_max, σ_min from in_sigmas[0], in_sigmas[-1] and compute in float64."""
    sched = EulerDiscreteScheduler()
    in_sigmas = np.array([hi, lo])
    ref = getattr(sched, f"_convert_to_{kind}")(in_sigmas=in_sigmas, num_inference_steps=n)
    ours = S.get_sigmas_beta(n, lo, hi) if kind == "beta" else _ours(kind, n, lo, hi)
    assert ours.shape == (n + 1,) and ours[-1] == 0
    np.testing.assert_allclose(ours[:-1], ref, **F64)


@needs_diffusers
@pytest.mark.parametrize("alpha,beta", [(0.6, 0.6), (0.3, 1.7), (2.0, 0.5)])
def test_beta_sigmas_parameters_match_diffusers(alpha, beta):
    ref = EulerDiscreteScheduler()._convert_to_beta(np.array([14.6, 0.03]), 17, alpha=alpha, beta=beta)
    ours = S.get_sigmas_beta(17, 0.03, 14.6, alpha=alpha, beta=beta)
    np.testing.assert_allclose(ours[:-1], ref, **F64)
    assert np.all(np.diff(ours) < 0)


def _euler_config(config: str) -> dict:
    if config == "default":  # linear β, "linspace" spacing
        return {}
    return dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                timestep_spacing="leading")  # Stable Diffusion 1.x/2.x


@needs_diffusers
@pytest.mark.parametrize("kind", ["karras", "exponential", "beta"])
@pytest.mark.parametrize("config", ["default", "sd"])
@pytest.mark.parametrize("n", [2, 10, 25])
def test_euler_converted_sigmas_and_timesteps_match_diffusers(kind, config, n):
    """EulerDiscreteScheduler(use_{kind}_sigmas=True).set_timesteps: σ between the spaced timesteps' σ_max and
    σ_min, timesteps = sigma_to_t(σ) on the training σ's; float32 there, float64 here."""
    cfg = _euler_config(config)
    sched = EulerDiscreteScheduler(**cfg, **{f"use_{kind}_sigmas": True})
    sched.set_timesteps(n)
    train = S.vp_sigmas(sched.alphas_cumprod.double().numpy())
    ts = S.inference_timesteps(1000, n, cfg.get("timestep_spacing", "linspace"), cfg.get("steps_offset", 0))
    lo, hi = train[ts[-1]], train[ts[0]]
    get = {"karras": S.get_sigmas_karras, "exponential": S.get_sigmas_exponential, "beta": S.get_sigmas_beta}[kind]
    sigmas = get(n, lo, hi)
    np.testing.assert_allclose(sigmas, sched.sigmas.double().numpy(), **F32)
    # the last converted σ is σ_min itself: t = ts[-1] up to float32 rounding of σ (t'(σ) ≈ 3 near t = 0)
    np.testing.assert_allclose(S.sigma_to_t(sigmas[:-1], train), sched.timesteps.double().numpy(), rtol=1e-6,
                               atol=1e-4)


# ------------------------------------------------------------------------------------- VP ↔ σ


@needs_diffusers
@pytest.mark.parametrize("cfg", [{}, _euler_config("sd"), dict(beta_schedule="squaredcos_cap_v2"),
                                 dict(rescale_betas_zero_snr=True)])
def test_vp_sigmas_match_euler_training_sigmas(cfg):
    sched = EulerDiscreteScheduler(**cfg)  # sigmas: the training σ's, descending, then 0 (before set_timesteps)
    ours = S.vp_sigmas(sched.alphas_cumprod.double().numpy())
    assert ours.dtype == np.float64 and ours.shape == (1000,)
    # ascending, except under zero terminal SNR: diffusers sets ᾱ_999 = 2⁻²⁴, above the rescaled ᾱ_998
    assert np.all(np.diff(ours[:-1] if cfg.get("rescale_betas_zero_snr") else ours) > 0)
    np.testing.assert_allclose(ours[::-1], sched.sigmas[:-1].double().numpy(), **F32)


def test_vp_sigmas_match_kdiffusion_discrete_schedule():
    ext = kdiffusion_external_or_skip()
    ac = np.cumprod(1 - S.get_named_beta_schedule("cosine", 1000))[:-1]  # ᾱ_{T−1} of the clipped cosine is ~0
    ref = ext.DiscreteEpsDDPMDenoiser(None, torch.from_numpy(ac), quantize=False).sigmas
    np.testing.assert_allclose(S.vp_sigmas(ac), ref.numpy(), **F64)


def _training_sigmas() -> np.ndarray:
    return S.vp_sigmas(np.cumprod(1 - S.get_named_beta_schedule("linear", 1000)))


def _sigma_probes(table: np.ndarray, rng) -> np.ndarray:
    """Log-uniform σ's over and beyond the table, the table's own values, its ends, 0 and far outside."""
    lo, hi = math.log(table[0] / 2), math.log(table[-1] * 2)
    inner = np.exp(rng.uniform(lo, hi, 300))
    return np.concatenate([inner, table[rng.integers(0, table.size, 20)], table[[0, -1]],
                           [0.0, table[0] * 1e-3, table[-1] * 1e3]])


@pytest.mark.parametrize("quantize", [False, True])
def test_sigma_to_t_matches_kdiffusion(quantize, rng):
    ext = kdiffusion_external_or_skip()
    table = _training_sigmas()
    probes = _sigma_probes(table, rng)
    schedule = ext.DiscreteSchedule(torch.from_numpy(table), quantize)
    ref = schedule.sigma_to_t(torch.from_numpy(probes)).numpy()
    ours = S.sigma_to_t(probes, table, quantize=quantize)
    assert ours.shape == probes.shape and ours.dtype == (np.int64 if quantize else np.float64)
    if quantize:
        np.testing.assert_array_equal(ours, ref)
    else:
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-9)
    assert ours.min() == 0 and ours.max() == table.size - 1  # 0 and far outside clamp to the ends


@needs_diffusers
def test_sigma_to_t_matches_diffusers(rng):
    table = _training_sigmas()
    probes = _sigma_probes(table, rng)
    ref = EulerDiscreteScheduler()._sigma_to_t(probes, np.log(table))
    np.testing.assert_allclose(S.sigma_to_t(probes, table), ref, rtol=1e-12, atol=1e-9)


def test_sigma_to_t_inverts_the_table_and_keeps_shape(rng):
    table = _training_sigmas()
    t = rng.uniform(0, 999, (3, 4))
    lo = np.floor(t).astype(int)
    w = t - lo  # log-linear interpolation of the table at t, which sigma_to_t inverts
    sig = np.exp((1 - w) * np.log(table[lo]) + w * np.log(table[np.minimum(lo + 1, 999)]))
    out = S.sigma_to_t(sig, table)
    assert out.shape == (3, 4)
    np.testing.assert_allclose(out, t, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(S.sigma_to_t(table, table), np.arange(1000))
    np.testing.assert_array_equal(S.sigma_to_t(table, table, quantize=True), np.arange(1000))
    assert S.sigma_to_t(float(table[5]), table).shape == ()


# --------------------------------------------------------------------------------- timestep spacings


def _spacing_cases():
    for spacing in ("leading", "linspace", "trailing"):
        for t, n in [(1000, 1), (1000, 7), (1000, 10), (1000, 50), (1000, 999), (1000, 1000), (50, 3), (37, 37)]:
            for offset in ((0, 1) if spacing == "leading" else (0,)):
                yield spacing, t, n, offset


@needs_diffusers
@pytest.mark.parametrize("spacing,T,n,offset", list(_spacing_cases()))
def test_inference_timesteps_match_diffusers_exactly(spacing, T, n, offset):
    cfg = dict(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
    if spacing == "leading" and (n - 1) * (T // n) + offset >= T:  # diffusers lists timestep T here
        with pytest.raises(ValueError, match="steps_offset"):
            S.inference_timesteps(T, n, spacing, offset)
        return
    ours = S.inference_timesteps(T, n, spacing, offset)
    assert ours.dtype == np.int64 and ours.shape == (n,) and np.all(np.diff(ours) < 0)
    assert ours.min() >= 0 and ours.max() < T
    for cls in (DDIMScheduler, DDPMScheduler):
        sched = cls(**cfg)
        sched.set_timesteps(n)
        assert sched.timesteps.dtype == torch.int64
        np.testing.assert_array_equal(ours, sched.timesteps.numpy())
    if spacing != "linspace":  # Euler keeps "linspace" unrounded; its leading and trailing are these, as float32
        euler = EulerDiscreteScheduler(**cfg)
        euler.set_timesteps(n)
        np.testing.assert_array_equal(ours.astype(np.float32), euler.timesteps.numpy())


def test_adapter_keeps_its_names():
    pytest.importorskip("diffusers")
    from fastdiff.adapters import diffusers as adapter

    assert adapter.spaced_timesteps is S.inference_timesteps
    assert adapter.rescale_zero_terminal_snr is S.rescale_zero_terminal_snr
    np.testing.assert_array_equal(adapter.spaced_timesteps(1000, 4, "leading", 1), [751, 501, 251, 1])


# ------------------------------------------------------------------------------------- zero terminal SNR


@needs_diffusers
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_rescale_zero_terminal_snr_matches_diffusers(schedule):
    betas32 = DDIMScheduler(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012).betas
    # torch in, torch out, in its dtype: bit for bit what diffusers computes (the adapters rely on it)
    out32 = S.rescale_zero_terminal_snr(betas32)
    assert out32.dtype == torch.float32 and torch.equal(out32, diffusers_rescale(betas32))
    # numpy float64: diffusers' own function on a float64 tensor; its float32 result within float32 error (β comes
    # back from ᾱ_t/ᾱ_{t−1} ≈ 1 − β, so float32 β is off by up to ~eps32/β ≈ 2e-4 relative, ᾱ by ~1e-7)
    ours = S.rescale_zero_terminal_snr(betas32.double().numpy())
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, diffusers_rescale(betas32.double()).numpy(), **F64)
    np.testing.assert_allclose(np.cumprod(1 - ours), np.cumprod(1 - out32.double().numpy()), rtol=1e-5, atol=1e-6)
    ac = np.cumprod(1 - ours)
    assert ours[-1] == 1 and ac[-1] == 0  # zero terminal SNR
    assert math.sqrt(ac[0]) == pytest.approx(math.sqrt(1 - betas32[0].item()), rel=1e-12)  # √ᾱ_0 kept
    assert np.all((ours > 0) & (ours <= 1))


def test_rescale_zero_terminal_snr_is_lin_algorithm_1(rng):
    betas = np.sort(rng.uniform(1e-4, 0.05, 200))
    sqrt_ac = np.sqrt(np.cumprod(1 - betas))
    expected = (sqrt_ac - sqrt_ac[-1]) * sqrt_ac[0] / (sqrt_ac[0] - sqrt_ac[-1])
    np.testing.assert_allclose(np.sqrt(np.cumprod(1 - S.rescale_zero_terminal_snr(betas))), expected, rtol=1e-9,
                               atol=1e-15)


# ------------------------------------------------------------------------------------------ flow matching


@needs_diffusers
@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
@pytest.mark.parametrize("n", [1, 4, 28, 50])
def test_flow_sigmas_match_flow_match_euler(shift, n):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(n)
    ours = S.flow_sigmas(n, shift)
    assert ours.dtype == np.float64 and ours.shape == (n + 1,) and ours[0] == 1 and ours[-1] == 0
    np.testing.assert_allclose(ours, sched.sigmas.double().numpy(), **F32)
    np.testing.assert_allclose(1000 * ours[:-1], sched.timesteps.double().numpy(), **F32)


@needs_diffusers
@pytest.mark.parametrize("mu", [0.5, 1.15, -0.3, 2.0])
@pytest.mark.parametrize("n", [1, 4, 28])
def test_flow_sigmas_with_mu_match_dynamic_shifting(mu, n):
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    sched.set_timesteps(n, mu=mu)
    np.testing.assert_allclose(S.flow_sigmas(n, mu=mu), sched.sigmas.double().numpy(), **F32)
    # the Flux pipeline passes sigmas = linspace(1, 1/N, N) with mu = calculate_shift(image_seq_len)
    sched.set_timesteps(n, sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    ours = S.flow_sigmas(n, sigma_min=1 / n, mu=mu)
    np.testing.assert_allclose(ours, sched.sigmas.double().numpy(), **F32)
    np.testing.assert_allclose(1000 * ours[:-1], sched.timesteps.double().numpy(), **F32)


@needs_diffusers
@pytest.mark.parametrize("shift", [3.0, 0.7, 1.0])
def test_flow_shift_matches_scheduler_training_sigmas(shift):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    base = np.linspace(1, 1000, 1000)[::-1] / 1000
    ours = S.flow_shift(base, shift)
    assert ours.dtype == np.float64 and ours.shape == (1000,)
    np.testing.assert_allclose(ours, sched.sigmas.double().numpy(), **F32)
    assert S.flow_shift(0.0, shift) == 0 and S.flow_shift(1.0, shift) == 1


@needs_diffusers
@pytest.mark.parametrize("exponent", [1.0, 0.7, 2.0])
def test_flow_time_shift_matches_diffusers(exponent, rng):
    mu = float(rng.uniform(-1, 2))
    s = np.concatenate([rng.uniform(1e-3, 1, 100), [1.0]])
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    np.testing.assert_allclose(S.flow_time_shift(mu, s, exponent), sched.time_shift(mu, exponent, s), rtol=1e-12)
    assert S.flow_time_shift(mu, 0.0, exponent) == 0 and S.flow_time_shift(mu, 1.0, exponent) == 1
    # σ = 1 is the static shift by e^μ
    np.testing.assert_allclose(S.flow_time_shift(mu, s), S.flow_shift(s, math.exp(mu)), rtol=1e-12)


def _diffusers_function(relpath: str, name: str):
    """A top-level function of an installed diffusers file, compiled alone: the Flux pipeline module imports
    transformers, which the dev environment does not need."""
    path = Path(importlib.util.find_spec("diffusers").submodule_search_locations[0]) / relpath
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
    assert nodes, f"{path} has no function {name}"
    namespace: dict = {}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


@needs_diffusers
def test_flow_mu_matches_flux_calculate_shift(rng):
    calculate_shift = _diffusers_function("pipelines/flux/pipeline_flux.py", "calculate_shift")
    for seq_len in [256, 1024, 4096, 6000, int(rng.integers(1, 10000))]:
        assert S.flow_mu(seq_len) == calculate_shift(seq_len)
    kw = dict(base_seq_len=128, max_seq_len=8192, base_shift=0.3, max_shift=1.6)
    assert S.flow_mu(2048, **kw) == calculate_shift(2048, **kw)
    assert S.flow_mu(256) == pytest.approx(0.5, rel=1e-12) and S.flow_mu(4096) == pytest.approx(1.15, rel=1e-12)


# --------------------------------------------------------------------------------------------- errors

ERRORS = [
    (lambda: S.get_sigmas_karras(0, 0.1, 10), ValueError, "^n must"),
    (lambda: S.get_sigmas_exponential(2.5, 0.1, 10), TypeError, "^n must"),
    (lambda: S.get_sigmas_polyexponential(True, 0.1, 10), TypeError, "^n must"),
    (lambda: S.get_sigmas_karras(5, 10, 10), ValueError, "sigma_min must be < sigma_max"),
    (lambda: S.get_sigmas_exponential(5, 20, 10), ValueError, "sigma_min must be < sigma_max"),
    (lambda: S.get_sigmas_beta(5, 2.0, 1.0), ValueError, "sigma_min must be < sigma_max"),
    (lambda: S.get_sigmas_polyexponential(5, 0.0, 10), ValueError, "^sigma_min must"),
    (lambda: S.get_sigmas_karras(5, 0.1, float("nan")), TypeError, "^sigma_max must"),
    (lambda: S.get_sigmas_karras(5, 0.1, 10, rho=0), ValueError, "^rho must"),
    (lambda: S.get_sigmas_polyexponential(5, 0.1, 10, rho=-1), ValueError, "^rho must"),
    (lambda: S.get_sigmas_beta(5, 0.1, 10, alpha=0), ValueError, "^alpha must"),
    (lambda: S.get_sigmas_beta(5, 0.1, 10, beta=-0.5), ValueError, "^beta must"),
    (lambda: S.vp_sigmas([0.9, 0.5, 0.0]), ValueError, "^alphas_cumprod must lie in"),
    (lambda: S.vp_sigmas([[0.9, 0.5]]), ValueError, "^alphas_cumprod must have 1"),
    (lambda: S.vp_sigmas([0.9, float("nan")]), ValueError, "^alphas_cumprod must be finite"),
    (lambda: S.vp_sigmas("0.5"), TypeError, "^alphas_cumprod"),
    (lambda: S.sigma_to_t(-1.0, [0.1, 1.0]), ValueError, "^sigma must lie in"),
    (lambda: S.sigma_to_t(1.0, [1.0, 0.1]), ValueError, "^sigmas must be strictly ascending"),
    (lambda: S.sigma_to_t(1.0, [0.1, 0.1, 1.0]), ValueError, "^sigmas must be strictly ascending"),
    (lambda: S.sigma_to_t(1.0, [1.0]), ValueError, "^sigmas must have at least 2"),
    (lambda: S.sigma_to_t(1.0, [0.0, 1.0]), ValueError, "^sigmas must lie in"),
    (lambda: S.sigma_to_t(1.0, [0.1, 1.0], quantize="yes"), TypeError, "^quantize"),
    (lambda: S.inference_timesteps(1000, 1001), ValueError, "^num_inference_steps must"),
    (lambda: S.inference_timesteps(1000, 0), ValueError, "^num_inference_steps must"),
    (lambda: S.inference_timesteps(0, 1), ValueError, "^num_train_timesteps must"),
    (lambda: S.inference_timesteps(1000, 10, "middle"), ValueError, "^spacing must be one of"),
    (lambda: S.inference_timesteps(1000, 10, "leading", -1), ValueError, "^steps_offset must"),
    (lambda: S.inference_timesteps(1000, 1000, "leading", 1), ValueError, "^steps_offset = 1 puts"),
    (lambda: S.rescale_zero_terminal_snr([0.1]), ValueError, "^betas must have at least 2"),
    (lambda: S.rescale_zero_terminal_snr([0.0, 0.1]), ValueError, "^betas must lie in"),
    (lambda: S.rescale_zero_terminal_snr(torch.zeros(2, 3)), ValueError, "^betas must have shape"),
    (lambda: S.flow_shift([0.5], -1.0), ValueError, "^shift must"),
    (lambda: S.flow_shift([0.5], 0.0), ValueError, "^shift must"),
    (lambda: S.flow_shift([0.5, 1.5], 3.0), ValueError, "^sigmas must lie in"),
    (lambda: S.flow_time_shift(float("inf"), [0.5]), TypeError, "^mu must"),
    (lambda: S.flow_time_shift(1.0, [0.5], sigma=0.0), ValueError, "^sigma must"),
    (lambda: S.flow_time_shift(1.0, [-0.1]), ValueError, "^sigmas must lie in"),
    (lambda: S.flow_mu(0), ValueError, "^image_seq_len must"),
    (lambda: S.flow_mu(1024, base_seq_len=4096), ValueError, "^base_seq_len must be < max_seq_len"),
    (lambda: S.flow_mu(1024, max_shift=None), TypeError, "^max_shift must"),
    (lambda: S.flow_sigmas(0), ValueError, "^num_inference_steps must"),
    (lambda: S.flow_sigmas(10, shift=-3.0), ValueError, "^shift must"),
    (lambda: S.flow_sigmas(10, shift=3.0, mu=1.0), ValueError, "shift .* or mu .*, not both"),
    (lambda: S.flow_sigmas(10, sigma_min=1.5), ValueError, "^sigma_min must"),
    (lambda: S.flow_sigmas(10, num_train_timesteps=0), ValueError, "^num_train_timesteps must"),
]


@pytest.mark.parametrize("call,exc,match", ERRORS, ids=[f"{i}-{e.__name__}" for i, (_, e, _m) in enumerate(ERRORS)])
def test_bad_arguments_are_refused_naming_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------------------------- loader


def test_kdiffusion_loader_leaves_no_stand_ins():
    kd = kdiffusion_sampling_or_skip()
    assert "k_diffusion" not in sys.modules or getattr(sys.modules["k_diffusion"], "__file__", None)
    assert "k_diffusion.utils" not in sys.modules
    assert load_kdiffusion_sampling() is kd  # loaded once
    assert kd.utils.append_dims(torch.zeros(3), 4).shape == (3, 1, 1, 1)
    if importlib.util.find_spec("torchsde") is None:
        assert "torchsde" not in sys.modules
        with pytest.raises(RuntimeError, match="torchsde is not installed"):
            kd.torchsde.BrownianTree
    if importlib.util.find_spec("torchdiffeq") is None:
        with pytest.raises(RuntimeError, match="torchdiffeq is not installed"):
            kd.odeint(None, None, None)
