"""FastDDPMScheduler / FastDDIMScheduler against diffusers' DDPMScheduler / DDIMScheduler: full sampling loops
within 1e-4 relative (fp32, CPU) over prediction types x spacings x eta x clipping x variance types, the same
generator giving the same images, pipelines, config round trips, argument errors and the absence of host reads
in `step`."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402

from fastdiff.adapters import FastDDIMScheduler, FastDDPMScheduler  # noqa: E402
from fastdiff.adapters import diffusers as fastdiff_diffusers  # noqa: E402

SHAPE = (2, 3, 8, 8)
STEPS = 10
REL = 1e-4


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Tiny tensors: one thread is faster on the shared 2-core machine."""


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b| (the loop's relative error; NaN if either has NaN)."""
    assert a.shape == b.shape
    if torch.isnan(a).any() or torch.isnan(b).any():
        return float("nan")
    return float((a - b).abs().max() / b.abs().max())


def toy_model(prediction: str, variance_type: str | None = None):
    """A deterministic, smooth stand-in for a denoiser, x: [N, C, H, W], t -> [N, C or 2C, H, W]. Its x0 / ε / v
    outputs are large enough that clipping at ±1 is active (checked in test_clipping_is_exercised)."""
    def model(x, t):
        t = float(t)
        base = torch.tanh(1.3 * x + 0.2 * torch.roll(x, 1, dims=-1)) + 0.05 * torch.cos(x * 3 + t * 0.013)
        out = base if prediction == "epsilon" else 1.6 * base
        if variance_type == "learned":  # the variance itself
            return torch.cat([out, 0.02 * torch.sigmoid(x)], dim=1)
        if variance_type == "learned_range":  # in [-1, 1]
            return torch.cat([out, torch.tanh(0.7 * x)], dim=1)
        return out
    return model


def x_T(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def run_loop(sched, model, x, seed=1, int_timesteps=False, **step_kwargs):
    """A pipeline-style loop; returns (final x, list of pred_original_sample, the generator)."""
    g = torch.Generator().manual_seed(seed)
    x0s = []
    for t in sched.timesteps:
        t = int(t) if int_timesteps else t
        out = sched.step(model(x, t), t, x, generator=g, **step_kwargs)
        x = out.prev_sample
        x0s.append(out.pred_original_sample)
    return x, x0s, g


def ddim_listed_reference(kwargs: dict, n: int, model, x, seed=1, **step_kwargs):
    """diffusers' own DDIMScheduler.step math with the *listed* previous timestep: ᾱ is re-indexed so index k holds
    ᾱ of the k-th smallest listed timestep and num_inference_steps = T makes diffusers' prev = k − T//T = k − 1."""
    ref = DDIMScheduler(**kwargs)
    ref.set_timesteps(n)
    listed = ref.timesteps.tolist()
    ascending = sorted(listed)
    ref.alphas_cumprod = ref.alphas_cumprod[ascending]
    ref.num_inference_steps = ref.config.num_train_timesteps
    g = torch.Generator().manual_seed(seed)
    for t in listed:
        x = ref.step(model(x, torch.tensor(t)), ascending.index(t), x, generator=g, **step_kwargs).prev_sample
    return x


def ddim_exact(sched, model, x, eta: float, seed=1):
    """DDIM eq. 12 in float64 over sched's listed timesteps, with diffusers' documented options (prediction type,
    clip_sample_range, ε̂ from the model unless clipped) and noise drawn from the generator as diffusers draws it.
    1 − ᾱ_prev − σ² is exactly 0 at ᾱ_t = 0 (zero terminal SNR, η = 1) and is clamped at 0 there."""
    cfg = sched.config
    ac = sched.alphas_cumprod.double()
    final = 1.0 if cfg.set_alpha_to_one else float(ac[0])
    g = torch.Generator().manual_seed(seed)
    x = x.double()
    listed = sched.timesteps.tolist()
    for i, t in enumerate(listed):
        out = model(x.float(), torch.tensor(t)).double()
        a_t = ac[t]
        a_prev = ac[listed[i + 1]] if i + 1 < len(listed) else torch.tensor(final, dtype=torch.float64)
        if cfg.prediction_type == "epsilon":
            x0, eps = (x - (1 - a_t).sqrt() * out) / a_t.sqrt(), out
        elif cfg.prediction_type == "sample":
            x0, eps = out, (x - a_t.sqrt() * out) / (1 - a_t).sqrt()
        else:
            x0, eps = a_t.sqrt() * x - (1 - a_t).sqrt() * out, a_t.sqrt() * out + (1 - a_t).sqrt() * x
        if cfg.clip_sample:
            x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp_min(0).sqrt() * eps
        if eta > 0:
            x = x + sigma * torch.randn(x.shape, generator=g, dtype=torch.float32).double()
    return x


# ------------------------------------------------------------------------------------------------- DDIM parity

PREDICTIONS = ["epsilon", "sample", "v_prediction"]


@pytest.mark.parametrize("use_clipped", [False, True], ids=["rawEps", "clippedEps"])
@pytest.mark.parametrize("clip", [False, True], ids=["noclip", "clip"])
@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["eta0", "eta1"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_loop_matches_diffusers(prediction, spacing, eta, clip, use_clipped):
    """Spacings where diffusers' t − T//N is the listed previous timestep (N = 10 divides T = 1000)."""
    kwargs = dict(prediction_type=prediction, timestep_spacing=spacing, clip_sample=clip)
    model = toy_model(prediction)
    ref, fast = DDIMScheduler(**kwargs), FastDDIMScheduler(**kwargs)
    ref.set_timesteps(STEPS)
    fast.set_timesteps(STEPS)
    assert fast.timesteps.tolist() == ref.timesteps.tolist()
    a, a0, ga = run_loop(ref, model, x_T(), eta=eta, use_clipped_model_output=use_clipped)
    b, b0, gb = run_loop(fast, model, x_T(), eta=eta, use_clipped_model_output=use_clipped)
    assert rel_err(b, a) < REL
    assert max(rel_err(q, p) for p, q in zip(a0, b0)) < REL
    assert torch.equal(ga.get_state(), gb.get_state())  # the same number of draws
    assert not torch.equal(a, x_T())


@pytest.mark.parametrize("clip", [False, True], ids=["noclip", "clip"])
@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["eta0", "eta1"])
@pytest.mark.parametrize("spacing,n", [("linspace", 10), ("trailing", 7), ("leading", 7)])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_loop_matches_diffusers_math_with_listed_prev(prediction, spacing, n, eta, clip):
    """Where diffusers' prev = t − T//N is not a listed timestep (linspace; trailing with N ∤ T), compare with
    diffusers' step math fed the listed previous timestep; leading with N ∤ T agrees with plain diffusers too."""
    kwargs = dict(prediction_type=prediction, timestep_spacing=spacing, clip_sample=clip)
    model = toy_model(prediction)
    fast = FastDDIMScheduler(**kwargs)
    fast.set_timesteps(n)
    b, _, _ = run_loop(fast, model, x_T(), eta=eta)
    assert rel_err(b, ddim_listed_reference(kwargs, n, model, x_T(), eta=eta)) < REL
    if spacing == "leading":
        ref = DDIMScheduler(**kwargs)
        ref.set_timesteps(n)
        assert rel_err(b, run_loop(ref, model, x_T(), eta=eta)[0]) < REL


@pytest.mark.parametrize("kwargs", [
    dict(steps_offset=1, set_alpha_to_one=False),
    dict(set_alpha_to_one=False),  # t = 0 listed: its step has d = √(1 − ᾱ_0) > 0 and must not be masked
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1),
    dict(beta_schedule="squaredcos_cap_v2", clip_sample_range=1.5),
    dict(trained_betas=torch.linspace(1e-4, 0.03, 1000).tolist(), clip_sample_range=0.5, prediction_type="sample"),
    dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing",
         clip_sample=False),
    # ε-prediction at ᾱ = 0: x̂0 = ±inf, clamped to ±1 (not inf − inf = NaN)
    dict(rescale_betas_zero_snr=True, timestep_spacing="trailing"),
    dict(num_train_timesteps=200, prediction_type="v_prediction", clip_sample_range=2.0),
], ids=["offset-noAlphaOne", "noAlphaOne", "sd-scaled-linear", "cos-range1.5", "trained-range0.5", "zero-snr",
        "zero-snr-eps-clip", "T200-range2"])
@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["eta0", "eta1"])
def test_ddim_config_variants(kwargs, eta):
    model = toy_model(kwargs.get("prediction_type", "epsilon"))
    ref, fast = DDIMScheduler(**kwargs), FastDDIMScheduler(**kwargs)
    ref.set_timesteps(STEPS)
    fast.set_timesteps(STEPS)
    assert torch.equal(fast.alphas_cumprod, ref.alphas_cumprod)
    b, b0, _ = run_loop(fast, model, x_T(), eta=eta)
    assert rel_err(b.double(), ddim_exact(fast, model, x_T(), eta)) < REL
    if kwargs.get("rescale_betas_zero_snr") and eta == 1.0:
        # ᾱ_999 = 0 makes 1 − ᾱ_prev − σ² exactly 0, and float32 evaluations of it may round either side of 0
        # (below: √ = NaN); the float64 math above is the oracle here, not the peer's rounding.
        assert torch.isfinite(b).all()
        return
    a, a0, _ = run_loop(ref, model, x_T(), eta=eta)
    assert rel_err(b, a) < REL
    assert max(rel_err(q, p) for p, q in zip(a0, b0)) < REL


def test_clipping_is_exercised():
    """The clip cases above compare something: x̂0 hits ±1 and the model's ε differs from the clipped x̂0's."""
    for prediction in PREDICTIONS:
        fast = FastDDIMScheduler(prediction_type=prediction)
        fast.set_timesteps(STEPS)
        _, x0s, _ = run_loop(fast, toy_model(prediction), x_T())
        assert any(bool((x0.abs() == 1).any()) for x0 in x0s), prediction
        raw = run_loop(fast, toy_model(prediction), x_T(), eta=1.0, use_clipped_model_output=False)[0]
        clipped = run_loop(fast, toy_model(prediction), x_T(), eta=1.0, use_clipped_model_output=True)[0]
        assert rel_err(raw, clipped) > 1e-3, prediction


def test_ddim_previous_timestep_is_the_listed_one():
    """T = 1000, N = 10, linspace lists 999, 888, ..., 0; fastdiff steps 999 -> 888, the next listed timestep
    (diffusers' DDIMScheduler takes 999 − T//N = 899, which is not listed)."""
    fast = FastDDIMScheduler(timestep_spacing="linspace", clip_sample=False)
    fast.set_timesteps(10)
    listed = fast.timesteps.tolist()
    assert listed == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert [fast.previous_timestep(t) for t in listed] == listed[1:] + [-1]
    assert fast.previous_timestep(fast.timesteps).tolist() == listed[1:] + [-1]
    # one step from 999: equal to DDIM eq. 12 with ᾱ_888
    x, eps = x_T(), toy_model("epsilon")(x_T(), 999)
    got = fast.step(eps, 999, x).prev_sample
    ac = fast.alphas_cumprod.double()
    x0 = (x.double() - (1 - ac[999]).sqrt() * eps.double()) / ac[999].sqrt()
    want = ac[888].sqrt() * x0 + (1 - ac[888]).sqrt() * eps.double()
    assert rel_err(got.double(), want) < 1e-5
    # DDPM (diffusers too) uses the listed timestep
    ddpm = FastDDPMScheduler(timestep_spacing="trailing")
    ddpm.set_timesteps(7)
    ref_ddpm = DDPMScheduler(timestep_spacing="trailing")
    ref_ddpm.set_timesteps(7)
    assert [ddpm.previous_timestep(int(t)) for t in ddpm.timesteps] == \
        [int(ref_ddpm.previous_timestep(t)) for t in ref_ddpm.timesteps]


# ------------------------------------------------------------------------------------------------- DDPM parity

VARIANCE_TYPES = ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"]


@pytest.mark.parametrize("clip", [False, True], ids=["noclip", "clip"])
@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
@pytest.mark.parametrize("spacing,n", [("leading", 10), ("linspace", 10), ("trailing", 7)])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddpm_loop_matches_diffusers(prediction, spacing, n, variance_type, clip):
    """fixed_large_log is compared with diffusers' fixed_large: diffusers takes √(log β) and returns NaN
    (asserted in test_ddpm_fixed_large_log_is_glide_max_log)."""
    kwargs = dict(prediction_type=prediction, timestep_spacing=spacing, clip_sample=clip)
    ref_vt = "fixed_large" if variance_type == "fixed_large_log" else variance_type
    ref = DDPMScheduler(variance_type=ref_vt, **kwargs)
    fast = FastDDPMScheduler(variance_type=variance_type, **kwargs)
    ref.set_timesteps(n)
    fast.set_timesteps(n)
    assert fast.timesteps.tolist() == ref.timesteps.tolist()
    model = toy_model(prediction, variance_type)
    a, a0, _ = run_loop(ref, model, x_T())
    b, b0, _ = run_loop(fast, model, x_T())
    assert rel_err(b, a) < REL
    assert max(rel_err(q, p) for p, q in zip(a0, b0)) < REL


@pytest.mark.parametrize("kwargs", [
    dict(steps_offset=1, variance_type="learned_range"),
    dict(beta_schedule="sigmoid", clip_sample_range=2.0, prediction_type="sample"),
    dict(beta_schedule="laplace", clip_sample=False),
    dict(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large"),
    dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"),
    dict(rescale_betas_zero_snr=True, timestep_spacing="trailing"),  # ε at ᾱ = 0: x̂0 = ±inf clamped to ±1
], ids=["offset-learned-range", "sigmoid-range2", "laplace", "cos-large", "zero-snr", "zero-snr-eps-clip"])
def test_ddpm_config_variants(kwargs):
    ref, fast = DDPMScheduler(**kwargs), FastDDPMScheduler(**kwargs)
    assert torch.equal(fast.alphas_cumprod, ref.alphas_cumprod)
    ref.set_timesteps(STEPS)
    fast.set_timesteps(STEPS)
    model = toy_model(kwargs.get("prediction_type", "epsilon"), kwargs.get("variance_type"))
    a, a0, _ = run_loop(ref, model, x_T())
    b, b0, _ = run_loop(fast, model, x_T())
    assert rel_err(b, a) < REL
    assert max(rel_err(q, p) for p, q in zip(a0, b0)) < REL


def test_ddpm_custom_timesteps_and_full_chain():
    ref, fast = DDPMScheduler(num_train_timesteps=50), FastDDPMScheduler(num_train_timesteps=50)
    # no set_timesteps: the whole chain t = 49 .. 0, prev = t − 1 (as diffusers)
    model = toy_model("epsilon")
    assert rel_err(run_loop(fast, model, x_T())[0], run_loop(ref, model, x_T())[0]) < REL
    custom = [45, 30, 29, 12, 3, 0]
    ref.set_timesteps(timesteps=custom)
    fast.set_timesteps(timesteps=custom)
    assert fast.custom_timesteps and fast.timesteps.tolist() == custom
    assert rel_err(run_loop(fast, model, x_T())[0], run_loop(ref, model, x_T())[0]) < REL


def test_ddpm_fixed_large_log_is_glide_max_log():
    """fastdiff's fixed_large_log is σ = √β_t (= fixed_large, GLIDE's max log-variance): checked against the
    float64 step μ̃_t(x_t, x̂0) + √β_t z (DDPM eq. 7 with σ² = β_t). diffusers' own fixed_large_log is not used
    as the oracle (it takes √ of log β_t)."""
    out = toy_model("epsilon")(x_T(), 999)
    results = {}
    for vt in ("fixed_large", "fixed_large_log"):
        s = FastDDPMScheduler(variance_type=vt, clip_sample=False)
        s.set_timesteps(STEPS)
        results[vt] = s.step(out, 900, x_T(), generator=torch.Generator().manual_seed(3)).prev_sample
    assert torch.equal(results["fixed_large"], results["fixed_large_log"])
    ac = s.alphas_cumprod.double()
    t, prev = 900, s.previous_timestep(900)
    a_t, a_prev = ac[t], ac[prev]
    beta = 1 - a_t / a_prev
    x, eps = x_T().double(), out.double()
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    mean = (a_prev.sqrt() * beta * x0 + (1 - a_prev) * (1 - beta).sqrt() * x) / (1 - a_t)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float32).double()
    assert rel_err(results["fixed_large_log"].double(), mean + beta.sqrt() * z) < 1e-5


def test_ddpm_noise_draws_match_diffusers():
    """Int timesteps: no draw at t = 0, exactly as diffusers (same generator state after the loop). Tensor
    timesteps: one extra draw at t = 0, masked in the kernel (same images, generator one draw further)."""
    model = toy_model("epsilon")
    ref, fast = DDPMScheduler(), FastDDPMScheduler()
    ref.set_timesteps(STEPS)
    fast.set_timesteps(STEPS)
    a, _, ga = run_loop(ref, model, x_T())
    b, _, gb = run_loop(fast, model, x_T(), int_timesteps=True)
    c, _, gc = run_loop(fast, model, x_T())
    assert rel_err(b, a) < REL and torch.equal(b, c)
    assert torch.equal(ga.get_state(), gb.get_state())
    assert not torch.equal(ga.get_state(), gc.get_state())


# ------------------------------------------------------------------------------------------------ generators


@pytest.mark.parametrize("cls", [FastDDIMScheduler, FastDDPMScheduler])
def test_same_generator_same_images(cls):
    kw = {"eta": 1.0} if cls is FastDDIMScheduler else {}
    model = toy_model("epsilon")
    s = cls()
    s.set_timesteps(STEPS)
    first = run_loop(s, model, x_T(), seed=7, **kw)[0]
    again = run_loop(s, model, x_T(), seed=7, **kw)[0]
    other = run_loop(s, model, x_T(), seed=8, **kw)[0]
    assert torch.equal(first, again)
    assert rel_err(other, first) > 1e-2


def test_variance_noise_is_used():
    s, ref = FastDDIMScheduler(), DDIMScheduler()
    s.set_timesteps(STEPS)
    ref.set_timesteps(STEPS)
    x, out, z = x_T(), toy_model("epsilon")(x_T(), 500), x_T(5)
    got = s.step(out, 500, x, eta=0.7, variance_noise=z).prev_sample
    assert rel_err(got, ref.step(out, 500, x, eta=0.7, variance_noise=z).prev_sample) < 1e-5
    assert rel_err(got, s.step(out, 500, x, eta=0.7, variance_noise=x_T(6)).prev_sample) > 1e-3
    ddpm, ref_ddpm = FastDDPMScheduler(), DDPMScheduler()
    ddpm.set_timesteps(STEPS)
    ref_ddpm.set_timesteps(STEPS)
    want = ref_ddpm.step(out, 500, x, generator=torch.Generator().manual_seed(2)).prev_sample
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    assert rel_err(ddpm.step(out, 500, x, variance_noise=z).prev_sample, want) < 1e-5


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_backends_agree(backend):
    s = FastDDIMScheduler(prediction_type="v_prediction")
    s.backend = backend
    s.set_timesteps(STEPS)
    ref = DDIMScheduler(prediction_type="v_prediction")
    ref.set_timesteps(STEPS)
    model = toy_model("v_prediction")
    assert rel_err(run_loop(s, model, x_T(), eta=1.0)[0], run_loop(ref, model, x_T(), eta=1.0)[0]) < REL


# ---------------------------------------------------------------------------------------------- launch count

LAUNCH_CASES = (
    [(FastDDIMScheduler, dict(prediction_type=p, clip_sample=c), dict(eta=eta, use_clipped_model_output=u))
     for p in PREDICTIONS for c in (False, True) for eta in (0.0, 1.0) for u in (False, True)]
    + [(FastDDPMScheduler, dict(prediction_type=p, clip_sample=c, variance_type=vt), {})
       for p in PREDICTIONS for c in (False, True) for vt in VARIANCE_TYPES])


def _launch_case_id(case) -> str:
    cls, cfg, kw = case
    return "-".join([cls.__name__[4:8]] + [f"{k}={v}" for k, v in {**cfg, **kw}.items()])


@pytest.mark.parametrize("case", LAUNCH_CASES, ids=[_launch_case_id(c) for c in LAUNCH_CASES])
def test_every_step_is_one_sampler_step_launch(case, monkeypatch):
    """Every `step` (tensor and int timesteps, every option: DDIM's unclipped-ε case with η = 1 and `sample`
    prediction included) is exactly one `sampler_step` launch, and the step table is built once per
    set_timesteps: not on the second step, nor on a second loop."""
    op = importlib.import_module("fastdiff.ops.sampler_step")  # the module (fastdiff.ops.sampler_step is the function)
    cls, cfg, kw = case
    calls = {"run_step": 0, "reference": 0, "build": 0}

    def counting(fn, name):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(fastdiff_diffusers, "run_step", counting(fastdiff_diffusers.run_step, "run_step"))
    monkeypatch.setattr(op, "reference", counting(op.reference, "reference"))  # the launches under run_step
    monkeypatch.setattr(cls, "_build", counting(cls._build, "build"))
    sched = cls(**cfg)
    sched.backend = "reference"
    sched.set_timesteps(STEPS)
    model = toy_model(cfg["prediction_type"], cfg.get("variance_type"))
    g = torch.Generator().manual_seed(0)
    for int_timesteps in (False, True):
        x = x_T()
        for t in sched.timesteps:
            t = int(t) if int_timesteps else t
            before = dict(calls)
            x = sched.step(model(x, t), t, x, generator=g, **kw).prev_sample
            assert calls["run_step"] - before["run_step"] == 1, (t, calls)
            assert calls["reference"] - before["reference"] == 1, (t, calls)
            assert calls["build"] == 1, (t, calls)
        assert torch.isfinite(x).all()
    sched.set_timesteps(STEPS + 1)  # new timesteps: the table is rebuilt, once
    x = x_T()
    for t in sched.timesteps[:2]:
        x = sched.step(model(x, t), t, x, generator=g, **kw).prev_sample
    assert calls["build"] == 2 and calls["run_step"] == 2 * STEPS + 2


# ------------------------------------------------------------------------------------------------- pipelines


def tiny_unet(out_channels: int = 3) -> UNet2DModel:
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=out_channels, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8)
    return unet.eval()


@torch.no_grad()
def test_ddim_pipeline_same_images():
    pipe = DDIMPipeline(tiny_unet(), DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    kw = dict(batch_size=2, num_inference_steps=8, eta=1.0, output_type="np")
    want = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    pipe.scheduler = FastDDIMScheduler.from_config(pipe.scheduler.config)
    assert isinstance(pipe.scheduler, FastDDIMScheduler)
    got = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    assert got.shape == want.shape == (2, 8, 8, 3)
    assert abs(got - want).max() < 1e-4 * max(1.0, abs(want).max())
    assert abs(got - pipe(generator=torch.Generator().manual_seed(1), **kw).images).max() > 1e-2


@torch.no_grad()
def test_ddpm_pipeline_same_images():
    unet = tiny_unet(out_channels=6)  # ε and learned-range variance channels
    pipe = DDPMPipeline(unet, DDPMScheduler(variance_type="learned_range", num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(batch_size=2, num_inference_steps=8, output_type="np")
    want = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    pipe.scheduler = FastDDPMScheduler.from_config(pipe.scheduler.config)
    got = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    assert abs(got - want).max() < 1e-4 * max(1.0, abs(want).max())


# ---------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("fast_cls,ref_cls", [(FastDDIMScheduler, DDIMScheduler), (FastDDPMScheduler, DDPMScheduler)])
def test_config_round_trip(tmp_path, fast_cls, ref_cls):
    kwargs = dict(num_train_timesteps=500, beta_schedule="scaled_linear", prediction_type="v_prediction",
                  timestep_spacing="trailing", clip_sample_range=1.5, steps_offset=1)
    fast = fast_cls(**kwargs)
    fast.save_config(tmp_path)
    loaded = fast_cls.from_pretrained(tmp_path)
    strip = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert type(loaded) is fast_cls and strip(loaded.config) == strip(fast.config)
    assert (tmp_path / "scheduler_config.json").read_text().count(fast_cls.__name__) == 1
    ref = ref_cls.from_config(fast.config)
    assert type(ref) is ref_cls
    assert strip(ref.config) == strip(fast.config)
    back = fast_cls.from_config(ref.config)
    assert strip(back.config) == strip(fast.config)
    assert loaded.config.num_train_timesteps == 500 and back.config.prediction_type == "v_prediction"
    assert fast_cls.order == 1 and fast.init_noise_sigma == 1.0 and len(fast) == 500
    assert ref_cls in fast.compatibles and DDIMScheduler in fast.compatibles
    x = x_T()
    assert fast.scale_model_input(x, 3) is x


def test_from_config_across_ddpm_and_ddim():
    ddpm = DDPMScheduler(variance_type="learned_range", clip_sample=False)
    fast = FastDDIMScheduler.from_config(ddpm.config)
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert public(fast.config) == public(DDIMScheduler.from_config(ddpm.config).config)
    assert fast.config.clip_sample is False
    # diffusers keeps DDPM-only keys as hidden config, so going back restores them
    assert FastDDPMScheduler.from_config(fast.config).config.variance_type == "learned_range"


def test_add_noise_and_velocity_match_diffusers():
    ref, fast = DDPMScheduler(beta_schedule="squaredcos_cap_v2"), FastDDPMScheduler(beta_schedule="squaredcos_cap_v2")
    x, noise = x_T(), x_T(9)
    t = torch.tensor([0, 999])
    assert rel_err(fast.add_noise(x, noise, t), ref.add_noise(x, noise, t)) < 1e-6
    assert rel_err(fast.add_noise(x, noise, torch.tensor(500)), ref.add_noise(x, noise, torch.tensor(500))) < 1e-6
    assert rel_err(fast.get_velocity(x, noise, t), ref.get_velocity(x, noise, t)) < 1e-6


# ---------------------------------------------------------------------------------------------------- errors


def test_constructor_errors():
    with pytest.raises(ValueError, match="thresholding"):
        FastDDIMScheduler(thresholding=True)
    with pytest.raises(ValueError, match="thresholding"):
        FastDDPMScheduler.from_config(DDPMScheduler(thresholding=True).config)
    with pytest.raises(ValueError, match="prediction_type"):
        FastDDIMScheduler(prediction_type="flow")
    with pytest.raises(ValueError, match="variance_type"):
        FastDDPMScheduler(variance_type="huge")
    with pytest.raises(ValueError, match="timestep_spacing"):
        FastDDIMScheduler(timestep_spacing="middle")
    with pytest.raises(NotImplementedError, match="beta_schedule"):
        FastDDIMScheduler(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="trained_betas"):
        FastDDPMScheduler(trained_betas=[0.1, 0.2])


def test_set_timesteps_errors():
    s = FastDDIMScheduler()
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(1001)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    with pytest.raises(TypeError, match="num_inference_steps"):
        s.set_timesteps(2.5)
    with pytest.raises(ValueError, match="steps_offset"):
        FastDDIMScheduler(steps_offset=1).set_timesteps(1000)  # 999 + 1 is out of range
    d = FastDDPMScheduler()
    with pytest.raises(ValueError, match="one of"):
        d.set_timesteps(10, timesteps=[5, 1])
    with pytest.raises(ValueError, match="descending"):
        d.set_timesteps(timesteps=[1, 5])
    with pytest.raises(ValueError, match="train_timesteps"):
        d.set_timesteps(timesteps=[1000, 5])
    with pytest.raises(ValueError, match="num_inference_steps or timesteps"):
        d.set_timesteps()


def test_step_errors():
    s = FastDDIMScheduler()
    x, out = x_T(), x_T(1)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(out, 10, x)
    s.set_timesteps(STEPS)
    with pytest.raises(ValueError, match="model_output"):
        s.step(out[:, :2], 900, x)
    with pytest.raises(TypeError, match="model_output"):
        s.step(out.double(), 900, x)
    with pytest.raises(TypeError, match="sample"):
        s.step(out, 900, x.long())
    with pytest.raises(ValueError, match="timestep"):
        s.step(out, 1000, x)
    with pytest.raises(TypeError, match="timestep"):
        s.step(out, torch.tensor(900.0), x)
    with pytest.raises(ValueError, match="timestep"):
        s.step(out, torch.tensor([900, 800, 700]), x)
    with pytest.raises(ValueError, match="eta"):
        s.step(out, 900, x, eta=-0.5)
    with pytest.raises(TypeError, match="eta"):
        s.step(out, 900, x, eta=torch.tensor(1.0))
    with pytest.raises(ValueError, match="variance_noise"):
        s.step(out, 900, x, eta=1.0, variance_noise=out[:1])
    with pytest.raises(ValueError, match="generator"):
        s.step(out, 900, x, eta=1.0, variance_noise=out, generator=torch.Generator())
    d = FastDDPMScheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match="variance channels"):
        d.step(out, 900, x)
    e = FastDDPMScheduler()
    with pytest.raises(ValueError, match="model_output"):
        e.step(torch.cat([out, out], 1), 900, x)


def test_import_fastdiff_without_diffusers():
    code = ("import sys; sys.modules['diffusers'] = None\n"
            "import fastdiff, fastdiff.adapters\n"
            "try:\n    fastdiff.adapters.FastDDIMScheduler\nexcept ImportError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERR" in out.stdout and "fastdiff[diffusers]" in out.stdout


# ------------------------------------------------------------------------------------------------- host sync


class HostReadTracer(torch.Tensor):
    """A tensor subclass recording every call that reads device values into Python (a host sync on CUDA)."""

    READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero"}
    calls: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in cls.READS:
            cls.calls.append(name)
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("make", [
    lambda: (FastDDIMScheduler(), {"eta": 1.0}),
    lambda: (FastDDIMScheduler(clip_sample=False), {}),
    lambda: (FastDDPMScheduler(variance_type="learned_range"), {}),
], ids=["ddim-clip-eta1", "ddim", "ddpm-learned-range"])
def test_step_reads_nothing_from_the_device(make, monkeypatch):
    """step() never calls item / bool / int / cpu / tolist / nonzero on its tensors (timestep included), so on CUDA
    it queues kernels without waiting. The tracer does catch diffusers' DDPM step (`t > 0`, index lookup). The
    timestep's range check, which reads it only where that is free (CPU), is told that these are device tensors."""
    monkeypatch.setattr(fastdiff_diffusers, "_host_read_is_free", lambda t: False)
    sched, kw = make()
    sched.set_timesteps(STEPS)
    channels = 6 if sched.config.get("variance_type") == "learned_range" else 3
    x = x_T().as_subclass(HostReadTracer)
    out = torch.randn(SHAPE[0], channels, *SHAPE[2:]).as_subclass(HostReadTracer)
    for t in sched.timesteps:
        t = t.as_subclass(HostReadTracer)
        HostReadTracer.calls = []
        res = sched.step(out, t, x, generator=torch.Generator().manual_seed(0), **kw)
        assert HostReadTracer.calls == [], (int(t.as_subclass(torch.Tensor)), HostReadTracer.calls)
        x = res.prev_sample
    ref = DDPMScheduler()
    ref.set_timesteps(STEPS)
    HostReadTracer.calls = []
    ref.step(out[:, :3], ref.timesteps[0].as_subclass(HostReadTracer), x_T().as_subclass(HostReadTracer))
    assert HostReadTracer.calls
