"""fastdiff.samplers.GraphedSampler: CPU error paths and the captured loop's math run everywhere; the CUDA graph
itself (parity with the eager fused loop, replays with new seeds and labels without re-capture, diffusers UNets,
capture errors) is tested on a GPU (marked gpu)."""
import numpy as np
import pytest
import torch

from fastdiff import ops
from fastdiff.diffusion import create_gaussian_diffusion
from fastdiff.samplers import GraphCaptureError, GraphedSampler, sample_ddim, sample_ddpm
from fastdiff.samplers.graphed import StaticLoop, capture_hint, sampling_plan

pytestmark = pytest.mark.usefixtures("one_thread")
AC = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
CUDA = torch.cuda.is_available()


def toy_model(x, t, y=None):
    """ε(x, t[, y]): elementwise in x and t, a per-class shift; graph-capturable and cheap."""
    out = torch.tanh(x) * (t.float() / 1000).view(-1, *([1] * (x.dim() - 1))) + 0.1 * x
    if y is not None:
        out = out + 0.05 * y.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return out


# ----------------------------------------------------------------------------------------------- CPU errors


@pytest.mark.skipif(CUDA, reason="checks the CPU-only error")
def test_cpu_device_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"^GraphedSampler needs a CUDA device; got cpu — use "
                                           r"fastdiff.samplers.sample_ddim for the eager loop$"):
        GraphedSampler(torch.nn.Conv2d(3, 3, 1), AC, (2, 3, 8, 8), 10)
    with pytest.raises(RuntimeError, match=r"got cuda, but torch.cuda.is_available\(\) is False"):
        GraphedSampler(toy_model, AC, (2, 3, 8, 8), 10)


def test_cpu_device_argument_is_a_clear_error():
    with pytest.raises(RuntimeError, match="needs a CUDA device; got cpu"):
        GraphedSampler(toy_model, AC, (2, 3, 8, 8), 10, device="cpu")


def test_unsupported_schedulers_and_arguments_raise_before_any_device_work():
    diffusers = pytest.importorskip("diffusers")
    with pytest.raises(TypeError, match="PNDMScheduler is not supported.*DDIM/DDPM scheduler, a fastdiff Fast"):
        GraphedSampler(toy_model, diffusers.PNDMScheduler(), (1, 3, 8, 8), 10)
    with pytest.raises(TypeError, match="thresholding=True"):
        GraphedSampler(toy_model, diffusers.DDIMScheduler(thresholding=True), (1, 3, 8, 8), 10)
    with pytest.raises(TypeError, match="clip_sample_range=2.0"):
        GraphedSampler(toy_model, diffusers.DDIMScheduler(clip_sample_range=2.0), (1, 3, 8, 8), 10)
    with pytest.raises(TypeError, match="variance_type='fixed_weird'"):
        sampling_plan(diffusers.DDPMScheduler(variance_type="fixed_weird"), 10)
    with pytest.raises(TypeError, match="diffusion_or_scheduler must be.*got str"):
        GraphedSampler(toy_model, "linear", (1, 3, 8, 8), 10)
    with pytest.raises(ValueError, match="sampler must be one of"):
        GraphedSampler(toy_model, AC, (1, 3, 8, 8), 10, sampler="dpm_fast")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        GraphedSampler(toy_model, AC, (1, 3, 8, 8), 0)
    with pytest.raises(TypeError, match="model must be callable"):
        GraphedSampler(None, AC, (1, 3, 8, 8), 10)


def test_static_loop_argument_errors():
    plan = sampling_plan(AC, 5)
    kw = {"eta": 0.0, "guidance_scale": None, "model_kwargs": None, "uncond_kwargs": None, "dtype": torch.float32, "device": "cpu"}
    with pytest.raises(ValueError, match="guidance_scale needs uncond_kwargs"):
        StaticLoop(toy_model, plan, (2, 3, 4, 4), **{**kw, "guidance_scale": 3.0})
    with pytest.raises(ValueError, match=r"model_kwargs\['y'\] must have the batch size 2"):
        StaticLoop(toy_model, plan, (2, 3, 4, 4), **{**kw, "model_kwargs": {"y": torch.zeros(3)}})
    with pytest.raises(ValueError, match="eta applies to the DDIM sampler only"):
        StaticLoop(toy_model, sampling_plan(AC, 5, "ddpm"), (2, 3, 4, 4), **{**kw, "eta": 1.0})
    loop = StaticLoop(toy_model, plan, (2, 3, 4, 4), **{**kw, "model_kwargs": {"y": torch.zeros(2, dtype=torch.long)}})
    with pytest.raises(ValueError, match=r"x_T must be a tensor of the captured shape \(2, 3, 4, 4\)"):
        loop.load(torch.zeros(1, 3, 4, 4), 0, {})
    with pytest.raises(ValueError, match=r"'y' must keep its captured shape \(2,\)"):
        loop.load(None, 0, {"y": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"model kwarg 'z' was not a tensor at capture.*\['y'\]"):
        loop.load(None, 0, {"z": torch.zeros(2)})
    with pytest.raises(ValueError, match="seed must be an int"):
        loop.load(None, -1, {})


def test_capture_hints_name_the_likely_cause():
    sync = capture_hint(RuntimeError("CUDA error: operation not permitted when stream is capturing"))
    assert "likely cause: a host synchronisation" in sync and ".item()" in sync
    cpu = capture_hint(RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cpu!"))
    assert "likely cause: a CPU tensor" in cpu and "other causes: a host synchronisation" in cpu
    other = capture_hint(ValueError("boom"))
    assert other.startswith("CUDA graph capture of the sampling loop failed (ValueError: boom)")
    assert "likely causes:" in other and "dynamic shape" in other and "CPU tensor" in other
    assert issubclass(GraphCaptureError, RuntimeError)


# ----------------------------------------------------------------------------------------------- the loop's math


def test_static_loop_keys_step_noise_by_its_device_seed_buffer(monkeypatch):
    """The loop hands the fused step its seed buffer (no noise tensor): what the buffer holds when the loop runs,
    not what it held when the loop was built, keys the noise, as in a graph replay."""
    calls = []
    real = ops.sampler_step

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    loop = _loop(toy_model, sampling_plan(AC, 4, "ddpm"), (2, 3, 4, 4), backend="cpu")
    x_T = torch.randn(2, 3, 4, 4)
    loop.load(x_T, 5, {})
    monkeypatch.setattr(ops, "sampler_step", spy)
    first = loop.run()
    monkeypatch.undo()
    assert [c["seed"] is loop.seed and "noise" not in c for c in calls] == [True] * 4
    assert [c["offset"] for c in calls] == [(i + 1) << 32 for i in range(4)]
    loop.seed.fill_(6)  # as a replay would see it
    second = loop.run()
    loop.load(x_T, 6, {})
    assert torch.equal(second, loop.run()) and not torch.equal(first, second)


def _loop(model, plan, shape, **kw):
    base = {"eta": 0.0, "guidance_scale": None, "model_kwargs": None, "uncond_kwargs": None, "dtype": torch.float32,
                "device": "cpu"}
    return StaticLoop(model, plan, shape, **{**base, **kw})


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_static_loop_matches_the_eager_fused_ddim_loop_with_cfg_and_noise(backend):
    """Bit for bit: the loop's steps read the seed from its device buffer, the eager loop passes it as an int."""
    shape, steps, seed = (3, 2, 5, 7), 10, int(torch.randint(0, 2**40, (1,)))
    y, null = torch.tensor([0, 1, 2]), torch.full((3,), 3)
    x_T = torch.randn(shape)
    loop = _loop(toy_model, sampling_plan(AC, steps), shape, eta=1.0, guidance_scale=3.0, model_kwargs={"y": y},
                 uncond_kwargs={"y": null}, backend=backend)
    loop.load(x_T, seed, {})
    got = loop.run()
    timesteps = list(range(0, 1000, 100))
    expected = sample_ddim(toy_model, x_T, timesteps, {"y": y}, alphas_cumprod=AC, eta=1.0, seed=seed,
                           guidance_scale=3.0, uncond_args={"y": null}, disable=True, backend=backend)
    assert torch.equal(got, expected)
    # a new seed and new labels through the same buffers give the eager result for them
    y2 = torch.tensor([2, 2, 0])
    loop.load(x_T, seed + 1, {"y": y2})
    expected2 = sample_ddim(toy_model, x_T, timesteps, {"y": y2}, alphas_cumprod=AC, eta=1.0, seed=seed + 1,
                            guidance_scale=3.0, uncond_args={"y": null}, disable=True, backend=backend)
    got2 = loop.run()
    assert torch.equal(got2, expected2)
    assert (got2 - got).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler_ancestral", "heun", "unipc"])
def test_static_loop_runs_the_sigma_space_solvers_as_the_eager_loop(sampler):
    """A σ-space solver in the captured loop: the eager k-diffusion-style function on the same Karras σ's,
    quantized model timesteps and Philox stream (initial noise σ_max·Philox(seed), step noise by row), with CFG."""
    from fastdiff import samplers
    from fastdiff.samplers.generate import sampling_sigmas

    shape, steps, seed = (3, 2, 5, 7), 6, 11
    y, null = torch.tensor([0, 1, 2]), torch.full((3,), 3)
    loop = _loop(toy_model, sampling_plan(AC, steps, sampler), shape, guidance_scale=2.0, model_kwargs={"y": y},
                 uncond_kwargs={"y": null}, backend="reference")
    loop.load(None, seed, {})
    got = loop.run()
    den = samplers.DiscreteVPDenoiser(toy_model, AC, quantize=True)
    sigmas = sampling_sigmas(den, steps, "karras")
    x_T = ops.randn_like(torch.empty(shape), seed=seed) * float(sigmas[0])
    expected = samplers.SAMPLERS[sampler](den, x_T, sigmas, {"y": y}, uncond_args={"y": null}, cfg_scale=2.0,
                                          seed=seed, disable=True, backend="reference")
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="schedule must be one of"):
        _loop(toy_model, sampling_plan(AC, steps, sampler), shape, schedule="cosine")


def test_static_loop_runs_lcm_as_the_eager_loop():
    shape, seed = (2, 2, 3, 5), 4
    loop = _loop(toy_model, sampling_plan(AC, 4, "lcm"), shape, backend="reference")
    x_T = torch.randn(shape)
    loop.load(x_T, seed, {})
    from fastdiff.samplers import sample_lcm
    expected = sample_lcm(toy_model, x_T, [750, 500, 250, 0], alphas_cumprod=AC, seed=seed, disable=True,
                          backend="reference")
    torch.testing.assert_close(loop.run(), expected, rtol=1e-6, atol=1e-6)


def test_static_loop_respaced_ddpm_feeds_base_timesteps():
    """SpacedDiffusion with learned range and rescaled timesteps: the model sees timestep_map · 1000/T."""
    diffusion = create_gaussian_diffusion(steps=2000, learn_sigma=True, timestep_respacing="20",
                                          rescale_timesteps=True)
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return torch.cat([toy_model(x, t), torch.tanh(x)], dim=1)

    plan = sampling_plan(diffusion, 20, "ddpm")
    assert plan.var_type == "learned_range" and plan.steps == 20
    shape, seed, x_T = (2, 3, 4, 4), 11, torch.randn(2, 3, 4, 4)
    loop = _loop(model, plan, shape)
    loop.load(x_T, seed, {})
    got = loop.run()
    first = seen[0]
    assert first.dtype == torch.float32 and float(first[0]) == diffusion.timestep_map[-1] * 0.5
    seen.clear()
    respaced = lambda x, t: model(x, torch.tensor(diffusion.timestep_map)[t].float() * 0.5)
    expected = sample_ddpm(respaced, x_T, None, alphas_cumprod=diffusion.alphas_cumprod, var_type="learned_range",
                           seed=seed, disable=True)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("set_alpha_to_one, steps_offset, spacing", [(True, 0, "leading"), (False, 1, "leading"),
                                                                      (False, 0, "trailing")])
def test_static_loop_matches_diffusers_ddim_scheduler(set_alpha_to_one, steps_offset, spacing):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset,
                                    timestep_spacing=spacing)
    x_T = torch.randn(2, 3, 6, 6)
    plan = sampling_plan(sched, 20)
    assert sched.num_inference_steps is None  # the caller's scheduler is untouched
    loop = _loop(toy_model, plan, x_T.shape)
    loop.load(x_T, 0, {})
    got = loop.run()
    sched.set_timesteps(20)
    x = x_T.clone()
    for t in sched.timesteps:
        x = sched.step(toy_model(x, t.expand(2)), t, x).prev_sample
    torch.testing.assert_close(got, x, atol=1e-5, rtol=1e-4)


def test_plan_of_a_ddpm_scheduler():
    diffusers = pytest.importorskip("diffusers")
    plan = sampling_plan(diffusers.DDPMScheduler(variance_type="fixed_small_log", prediction_type="v_prediction"), 25)
    assert (plan.sampler, plan.prediction, plan.var_type, plan.clip_denoised) == ("ddpm", "v", "fixed_small", True)
    assert plan.table_ts == list(range(0, 1000, 40)) and plan.first_step_row == 0


# ----------------------------------------------------------------------------------------------- GPU


def _eager(model, x_T, seed, **kw):
    return sample_ddim(model, x_T, list(range(0, 1000, 20)), kw.pop("extra", None), alphas_cumprod=AC,
                       seed=seed, disable=True, **kw)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_graph_matches_eager_and_replays_new_seeds_and_labels_without_recapture(dtype, tol):
    from fastdiff.models import UNetModel

    torch.manual_seed(0)
    model = UNetModel(16, 3, 32, 3, 1, (2,), channel_mult=(1, 2), num_heads=2, num_classes=5,
                      use_scale_shift_norm=True).cuda().eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model = model.to(dtype) if dtype != torch.float32 else model
    y, null = torch.tensor([0, 1, 2, 3], device="cuda"), torch.full((4,), 4, device="cuda")
    sampler = GraphedSampler(model, AC, (4, 3, 16, 16), 50, eta=1.0, guidance_scale=3.0, model_kwargs={"y": y},
                             uncond_kwargs={"y": null}, dtype=dtype)
    for seed, labels in ((5, y), (6, y), (6, y.flip(0))):
        x_T = ops.randn_like(torch.empty(4, 3, 16, 16, device="cuda", dtype=dtype), seed=seed)
        got = sampler(x_T, seed=seed, y=labels)
        with torch.no_grad():
            expected = _eager(model, x_T, seed, extra={"y": labels}, eta=1.0, guidance_scale=3.0,
                              uncond_args={"y": null})
        torch.testing.assert_close(got.float(), expected.float(), atol=tol * 10, rtol=tol)
        assert torch.equal(got, sampler(x_T, seed=seed, y=labels))  # replays are deterministic
    assert sampler.captures == 1
    a, b = sampler(None, seed=1, y=y), sampler(None, seed=2, y=y)
    assert (a.float() - b.float()).abs().max() > 1e-2  # a new seed is new noise in the graph


@pytest.mark.gpu
def test_graph_with_a_patched_diffusers_unet_and_scheduler():
    diffusers = pytest.importorskip("diffusers")
    from fastdiff.adapters import patch

    unet = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32).cuda().eval()
    assert patch(unet) > 0
    sched = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    sampler = GraphedSampler(unet, sched, (2, 3, 16, 16), 25)
    x_T = torch.randn(2, 3, 16, 16, device="cuda")
    got = sampler(x_T)
    sched.set_timesteps(25)
    x = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
    torch.testing.assert_close(got, x, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
def test_capture_errors_are_clear():
    def syncing(x, t):
        return x * float(t[0])  # .item()-style host sync

    with pytest.raises(GraphCaptureError, match="likely cause: a host synchronisation"):
        GraphedSampler(syncing, AC, (2, 3, 8, 8), 10)

    def cpu_tensor(x, t):
        return x * torch.ones(1, 3, 1, 1) + 0 * t.view(-1, 1, 1, 1)

    with pytest.raises(Exception, match="CPU tensor|same device"):
        GraphedSampler(cpu_tensor, AC, (2, 3, 8, 8), 10)


@pytest.mark.parametrize("name, opts", [
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True}), ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("UniPCMultistepScheduler", {}), ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}),
])
def test_static_loop_runs_a_diffusers_sigma_scheduler(name, opts):
    """A fastdiff Fast σ-space scheduler plans its own rows, model timesteps and input scale: the static loop
    gives the pipeline-style loop of the stock scheduler (fp32, 1e-5); a stock one is pointed to its Fast version."""
    diffusers = pytest.importorskip("diffusers")
    from fastdiff.adapters import FAST_SCHEDULERS

    sched = getattr(diffusers, name)(**opts)
    with pytest.raises(TypeError, match=f"FAST_SCHEDULERS\\['{name}'\\]"):
        sampling_plan(sched, 8)
    plan = sampling_plan(FAST_SCHEDULERS[name].from_config(sched.config), 8)
    assert plan.steps == 8 and plan.step_table is not None
    shape = (2, 3, 4, 4)
    model = lambda x, t: torch.tanh(0.5 * x + torch.cos(torch.as_tensor(t, dtype=torch.float32) / 300)  # noqa: E731
                                    .reshape(-1, 1, 1, 1))
    x_T = torch.randn(shape) * plan.init_sigma
    loop = _loop(model, plan, shape)
    loop.load(x_T, 0, {})
    got = loop.run()
    sched.set_timesteps(8)
    x = x_T
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        x = sched.step(model(x_in, t.expand(2)), t, x).prev_sample
    assert torch.allclose(got, x, rtol=0, atol=1e-5 * x.abs().max())
    with pytest.raises(ValueError, match="own sampler"):
        sampling_plan(FAST_SCHEDULERS[name].from_config(sched.config), 8, "euler")
    with pytest.raises(TypeError, match="PNDMScheduler"):
        sampling_plan(diffusers.PNDMScheduler(), 8)
