"""fastdiff's σ-space diffusers schedulers (fastdiff.adapters.diffusers_solvers) against the stock ones, and
fastdiff.accelerate / deaccelerate on a real (tiny) diffusers pipeline.

Scheduler loops run as pipelines run them (set_timesteps; per timestep scale_model_input, a model call, step with
a seeded generator) with a fixed toy model; the fast loop must give the stock loop's final sample within 1e-5
relative (fp32), make one fused launch per step and read nothing from the device inside `step`."""
from __future__ import annotations

import inspect
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

diffusers = pytest.importorskip("diffusers")

import fastdiff  # noqa: E402
from fastdiff.adapters import acceleration  # noqa: E402
from fastdiff.adapters import diffusers_solvers as ds  # noqa: E402
from fastdiff.adapters.diffusers_solvers import FAST_SCHEDULERS  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _tiny_pipelines as tiny  # noqa: E402

SHAPE = (2, 4, 8, 8)
RTOL = 1e-5
BACKENDS = ["reference"] + (["cpu"] if hasattr(torch.ops.fastdiff, "sampler_step") else [])
_W = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) / 2


def model(x, t):
    """A fixed toy denoiser: tanh(W·x + cos(t/300))."""
    t = torch.as_tensor(t, dtype=torch.float32)
    return torch.tanh(torch.einsum("oc,nc...->no...", _W, x) + torch.cos(t / 300))


def loop(sched, x, steps, seed=5, timestep_of=lambda t: t, **set_kwargs):
    sched.set_timesteps(steps, **set_kwargs)
    g = torch.Generator().manual_seed(seed)
    x = x * getattr(sched, "init_noise_sigma", 1.0)
    kw = {"generator": g} if "generator" in inspect.signature(sched.step).parameters else {}
    for t in sched.timesteps:
        t = timestep_of(t)
        x_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        x = sched.step(model(x_in, t), t, x, **kw).prev_sample
    return x


CASES = [
    ("EulerDiscreteScheduler", {}), ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("EulerDiscreteScheduler", {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}),
    ("EulerDiscreteScheduler", {"final_sigmas_type": "sigma_min"}),
    ("EulerDiscreteScheduler", {"use_exponential_sigmas": True, "prediction_type": "sample"}),
    ("EulerDiscreteScheduler", {"timestep_type": "continuous", "prediction_type": "v_prediction"}),
    ("EulerAncestralDiscreteScheduler", {}), ("EulerAncestralDiscreteScheduler", {"prediction_type": "v_prediction"}),
    ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "leading", "steps_offset": 1}),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}), ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}),
    ("FlowMatchEulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("FlowMatchEulerDiscreteScheduler", {"shift_terminal": 0.1, "use_exponential_sigmas": True}),
    ("DPMSolverMultistepScheduler", {}), ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("DPMSolverMultistepScheduler", {"solver_order": 3, "lower_order_final": False}),
    ("DPMSolverMultistepScheduler", {"solver_type": "heun"}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun",
                                     "use_karras_sigmas": True}),
    ("DPMSolverMultistepScheduler", {"final_sigmas_type": "sigma_min", "euler_at_final": True}),
    ("DPMSolverMultistepScheduler", {"solver_order": 1, "use_beta_sigmas": True}),
    ("DPMSolverMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction",
                                     "flow_shift": 3.0}),
    ("DPMSolverMultistepScheduler", {"prediction_type": "v_prediction", "use_lu_lambdas": True}),
    ("UniPCMultistepScheduler", {}), ("UniPCMultistepScheduler", {"solver_order": 3}),
    ("UniPCMultistepScheduler", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}),
    ("UniPCMultistepScheduler", {"disable_corrector": [0, 2], "use_karras_sigmas": True}),
    ("LCMScheduler", {}), ("LCMScheduler", {"prediction_type": "v_prediction"}),
]
_IDS = [f"{name[:-9]}-{'-'.join(f'{k}={v}' for k, v in opts.items()) or 'default'}" for name, opts in CASES]


def _pair(name, opts):
    stock = getattr(diffusers, name)(**opts)
    return stock, FAST_SCHEDULERS[name].from_config(stock.config)


def _x():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("steps", [4, 20])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, opts", CASES, ids=_IDS)
def test_fast_loop_matches_stock_loop(name, opts, backend, steps, one_thread):
    stock, fast = _pair(name, opts)
    fast.backend = backend
    assert isinstance(fast, type(stock)) and dict(fast.config) == dict(stock.config)
    expected = loop(stock, _x(), steps)
    got = loop(fast, _x(), steps)
    scale = expected.abs().max().item()
    assert math.isfinite(scale) and scale > 0.05
    err = (got - expected).abs().max().item() / scale
    assert err <= RTOL, f"max |fast − stock| / max |stock| = {err:.3e}"


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
                                  "FlowMatchEulerDiscreteScheduler"])
def test_begin_index_starts_mid_schedule(name):
    """img2img: set_begin_index(k) and the loop over timesteps[k:] (the rows are the stock scheduler's)."""
    stock, fast = _pair(name, {})
    out = []
    for s in (stock, fast):
        s.set_timesteps(10)
        s.set_begin_index(4)
        x = _x()
        for t in s.timesteps[4:]:
            x_in = s.scale_model_input(x, t) if hasattr(s, "scale_model_input") else x
            x = s.step(model(x_in, t), t, x).prev_sample
        out.append(x)
        assert s.step_index == 10
    assert torch.allclose(out[0], out[1], rtol=0, atol=1e-5 * out[0].abs().max())


class HostReads(TorchFunctionMode):
    """Records every call that copies tensor values to Python (a host synchronisation on CUDA)."""
    READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero",
             "__len__"}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in self.READS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


_ONE_EACH = [("EulerDiscreteScheduler", {}), ("EulerAncestralDiscreteScheduler", {}),
             ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}), ("FlowMatchEulerDiscreteScheduler",
                                                                  {"stochastic_sampling": True}),
             ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
             ("DPMSolverMultistepScheduler", {"solver_order": 3}), ("UniPCMultistepScheduler", {}), ("LCMScheduler", {})]


@pytest.mark.parametrize("name, opts", _ONE_EACH, ids=[f"{n[:-9]}-{'-'.join(map(str, o.values())) or 'default'}"
                                                       for n, o in _ONE_EACH])
def test_step_reads_nothing_from_the_device(name, opts, monkeypatch):
    """Neither `step` nor `scale_model_input` reads a tensor back to Python, the first step's index included
    (looked up on the device: the timesteps are told to be device tensors), and each step is one fused launch."""
    stock, fast = _pair(name, opts)
    monkeypatch.setattr(ds._FusedStep, "_lookup_on_host", lambda self, t: False)
    launches = []
    real = ds.run_step
    monkeypatch.setattr(ds, "run_step", lambda *a: launches.append(1) or real(*a))
    fast.set_timesteps(6)
    g = torch.Generator().manual_seed(3)
    x = _x() * getattr(fast, "init_noise_sigma", 1.0)
    reads = HostReads()
    kw = {"generator": g} if "generator" in inspect.signature(fast.step).parameters else {}
    for t in fast.timesteps:
        with reads:
            x_in = fast.scale_model_input(x, t) if hasattr(fast, "scale_model_input") else x
        out = model(x_in, t)
        with reads:
            x = fast.step(out, t, x, **kw).prev_sample
    assert reads.calls == [], reads.calls
    assert len(launches) == 6
    expected = loop(stock, _x(), 6, seed=3)
    assert torch.allclose(x, expected, rtol=0, atol=RTOL * expected.abs().max())
    assert fast.step_index == 6  # read back from the device when asked


def test_set_timesteps_again_reuses_the_device_table(monkeypatch):
    fast = FAST_SCHEDULERS["DPMSolverMultistepScheduler"]()
    fast.set_timesteps(8)
    loop(fast, _x(), 8)
    table = fast._device[(torch.device("cpu"), torch.float32)]
    fast.set_timesteps(8)
    loop(fast, _x(), 8)
    assert fast._device[(torch.device("cpu"), torch.float32)] is table  # nothing new copied to the device
    fast.set_timesteps(9)
    assert fast._device == {}


@pytest.mark.parametrize("name, opts, match", [
    ("DPMSolverMultistepScheduler", {"thresholding": True}, "thresholding"),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}, "algorithm_type"),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"},
     "algorithm_type"),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, "solver_order"),
    ("UniPCMultistepScheduler", {"predict_x0": False}, "predict_x0"),
    ("UniPCMultistepScheduler", {"thresholding": True}, "thresholding"),
    ("LCMScheduler", {"clip_sample": True}, "clip_sample"),
    ("FlowMatchEulerDiscreteScheduler", {"invert_sigmas": True}, "invert_sigmas"),
])
def test_unsupported_options_raise_at_construction(name, opts, match):
    stock = getattr(diffusers, name)(**opts)  # the stock scheduler takes them
    with pytest.raises(ValueError, match=match):
        FAST_SCHEDULERS[name].from_config(stock.config)
    with pytest.raises(ValueError, match=match):
        FAST_SCHEDULERS[name](**opts)


def test_unsupported_step_arguments_raise():
    euler = FAST_SCHEDULERS["EulerDiscreteScheduler"]()
    euler.set_timesteps(4)
    x = _x()
    with pytest.raises(ValueError, match="s_churn"):
        euler.step(x, euler.timesteps[0], x, s_churn=0.5)
    flow = FAST_SCHEDULERS["FlowMatchEulerDiscreteScheduler"]()
    flow.set_timesteps(4)
    with pytest.raises(ValueError, match="per_token_timesteps"):
        flow.step(x, flow.timesteps[0], x, per_token_timesteps=torch.ones(2, 64))
    with pytest.raises(ValueError, match="shape"):
        flow.step(x[:, :2], flow.timesteps[0], x)
    fresh = FAST_SCHEDULERS["UniPCMultistepScheduler"]()
    with pytest.raises(ValueError, match="set_timesteps"):
        fresh.step(x, 999, x)


def test_config_round_trip(tmp_path):
    fast = FAST_SCHEDULERS["DPMSolverMultistepScheduler"](use_karras_sigmas=True, solver_order=3)
    fast.save_config(tmp_path)
    again = FAST_SCHEDULERS["DPMSolverMultistepScheduler"].from_pretrained(tmp_path)
    assert again.config.use_karras_sigmas and again.config.solver_order == 3
    stock = diffusers.DPMSolverMultistepScheduler.from_config(fast.config)  # and back to the stock one
    assert type(stock) is diffusers.DPMSolverMultistepScheduler and stock.config.solver_order == 3


# ------------------------------------------------------------------------------------------------ accelerate


def _patched(model) -> bool:
    return any(fastdiff.is_patched(m) for m in model.modules())


def _images(pipe, kwargs, seed=3):
    return tiny.run(pipe, kwargs, seed=seed)[0]


@pytest.fixture(scope="module")
def sd():
    pipe, kwargs = tiny.tiny_sd(steps=6)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    return pipe, kwargs


def test_accelerate_then_deaccelerate_restores_exactly(sd, one_thread):
    pipe, kwargs = sd
    stock_sched, cls = pipe.scheduler, type(pipe)
    stock = _images(pipe, kwargs)
    report = fastdiff.accelerate(pipe, patch=False)  # the scheduler only
    assert report.patched == {} and not _patched(pipe.unet)
    fastdiff.deaccelerate(pipe)
    report = fastdiff.accelerate(pipe)
    try:
        assert type(pipe.scheduler) is FAST_SCHEDULERS["DPMSolverMultistepScheduler"]
        assert "FastDPMSolverMultistepScheduler" in report.scheduler and report.patched.get("unet", 0) > 0
        assert report.cuda_graph == "off" and _patched(pipe.unet)
        assert pipe.config.scheduler[1] == "FastDPMSolverMultistepScheduler"
        fast = _images(pipe, kwargs)
        assert abs(fast - stock).max() <= 1e-4 * abs(stock).max()
        with pytest.raises(ValueError, match="already accelerated"):
            fastdiff.accelerate(pipe)
    finally:
        fastdiff.deaccelerate(pipe)
    assert pipe.scheduler is stock_sched and type(pipe) is cls and not _patched(pipe.unet) and not _patched(pipe.vae)
    assert pipe.config.scheduler[1] == "DPMSolverMultistepScheduler"
    assert (_images(pipe, kwargs) == stock).all()
    with pytest.raises(ValueError, match="not accelerated"):
        fastdiff.deaccelerate(pipe)


def test_accelerate_reports_what_it_keeps(sd):
    pipe, _ = sd
    with pytest.raises(TypeError, match="pipe"):
        fastdiff.accelerate(pipe.unet)
    original = pipe.scheduler
    pipe.scheduler = diffusers.PNDMScheduler.from_config(original.config)
    try:
        report = fastdiff.accelerate(pipe, patch=False, cuda_graph=True)
        assert isinstance(pipe.scheduler, diffusers.PNDMScheduler) and "no fused PNDMScheduler" in report.scheduler
        assert report.patched == {} and "CUDA" in report.cuda_graph  # the tiny pipeline is on the CPU
        fastdiff.deaccelerate(pipe)
        pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(original.config, thresholding=True)
        report = fastdiff.accelerate(pipe, patch=False)
        assert "thresholding" in report.scheduler and type(pipe.scheduler) is diffusers.DPMSolverMultistepScheduler
        fastdiff.deaccelerate(pipe)
    finally:
        pipe.scheduler = original


class _EagerCapture:
    """Stands in for a CUDA graph on the CPU: ops run as captured; replay does nothing."""
    replays = 0

    def begin(self):
        pass

    def end(self):
        pass

    def replay(self):
        type(self).replays += 1


def test_loop_capture_records_the_loop_inputs(sd, monkeypatch, one_thread):
    """The capture bookkeeping on the CPU (the graph itself needs CUDA): call 1 runs eagerly, call 2 captures
    (ops run, so it returns the stock images) and records, per denoiser / step call, exactly the tensors that
    come from outside the loop; call 3 copies the new call's inputs into them. A loop that reads a tensor from
    outside that is no call argument is not replayed."""
    pipe, kwargs = sd
    monkeypatch.setattr(acceleration, "_GRAPH_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(acceleration._LoopGraph, "capture_cls", _EagerCapture)
    kwargs = {k: v for k, v in kwargs.items()}
    stock = _images(pipe, kwargs)
    report = fastdiff.accelerate(pipe, patch=False, cuda_graph=True)
    try:
        graph = getattr(pipe, acceleration._STATE).graph
        assert type(pipe).__name__ == "StableDiffusionPipeline" and report.cuda_graph.startswith("on")
        with torch.no_grad():
            out = pipe(**kwargs, generator=torch.Generator().manual_seed(3)).images  # warm-up, eager
        assert abs(out - stock).max() <= 1e-4 * abs(stock).max() and not graph.graphs
        with torch.no_grad():
            out = pipe(**kwargs, generator=torch.Generator().manual_seed(3)).images  # capture
        assert abs(out - stock).max() <= 1e-4 * abs(stock).max()
        (captured,) = graph.graphs.values()
        assert captured.eager_reason == "" and report.cuda_graph == "on (loop captured)"
        calls = captured.calls
        assert len(calls) == 12  # 6 denoiser calls and 6 steps, alternating
        # unet(x_in, t, encoder_hidden_states=...): x_in (the doubled x_T), t and the prompts come from outside at
        # the first call; later x_in comes from the loop
        assert {p[1:] for p, _ in calls[0].outside} == {(0,), (1,), ("encoder_hidden_states",)}
        assert all({p[1:] for p, _ in c.outside} == {(1,), ("encoder_hidden_states",)} for c in calls[2::2])
        # step(noise_pred, t, latents): latents from outside at the first step only
        assert {p for p, _ in calls[1].outside} == {(0, 1), (0, 2)}
        assert all({p for p, _ in c.outside} == {(0, 1)} for c in calls[3::2])
        with torch.no_grad():  # replay: the new call's initial latents go into the captured input
            pipe(**kwargs, generator=torch.Generator().manual_seed(4))
        assert _EagerCapture.replays == 2
        g = torch.Generator().manual_seed(4)
        x_T = torch.randn((1, 4, 8, 8), generator=g)
        step0_sample = dict(calls[1].outside)[(0, 2)]
        assert torch.equal(step0_sample, x_T * pipe.scheduler.init_noise_sigma)
        # a loop reading an outside tensor that is not a call argument is not replayed
        bias = torch.zeros(())
        inner = graph._forward
        monkeypatch.setattr(graph, "_forward", lambda *a, **k: (inner(*a, **k)[0] + bias,))
        with torch.no_grad():
            for seed in (5, 6):
                pipe(**{**kwargs, "guidance_scale": 3.0}, generator=torch.Generator().manual_seed(seed))
        assert "reads 1 tensor" in report.cuda_graph
    finally:
        fastdiff.deaccelerate(pipe)
    assert "forward" not in pipe.unet.__dict__ and "step" not in pipe.scheduler.__dict__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_loop_gives_the_eager_images():
    pipe, kwargs = tiny.tiny_sd(steps=6)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.to("cuda")
    kwargs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    eager = [_images(pipe, kwargs, seed) for seed in (1, 2, 3)]
    report = fastdiff.accelerate(pipe, cuda_graph=True)
    try:
        graphed = [_images(pipe, kwargs, seed) for seed in (1, 2, 3)]  # eager, capture, replay
        assert report.cuda_graph == "on (loop captured)", report.cuda_graph
    finally:
        fastdiff.deaccelerate(pipe)
    for e, g in zip(eager, graphed):
        assert abs(g - e).max() <= 1e-3 * abs(e).max()
