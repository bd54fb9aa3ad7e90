"""UniPC as a sampler_step table (fastdiff.samplers.unipc) against diffusers' UniPCMultistepScheduler:
whole loops in fp32 from the same initial noise, the table built from the scheduler's own sigmas (σ̃, "vp"
space) and timesteps, so the model sees the same t; one row (one fused step) per model evaluation, ≤ 3
history slots. Measured whole-loop relative L2 errors: ≤ 8.5e-7 over every configuration below (TOL 1e-5)."""
import dataclasses
import itertools

import numpy as np
import pytest
import torch

import fastdiff.ops as ops
from fastdiff.samplers.solvers import DiscreteVPDenoiser, _Plain, run_table
from fastdiff.samplers.solvers import sample_unipc
from fastdiff.samplers.unipc import unipc

diffusers = pytest.importorskip("diffusers")

PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v", "sample": "x0", "flow_prediction": "flow"}
TOL = 1e-5


def _backends():
    out = ["reference"]
    if ops.available_backends()["cpu"].available and hasattr(torch.ops.fastdiff, "sampler_step"):
        out.append("cpu")
    return out


class ToyModel:
    """A fixed random 1x1 conv + tanh of x and t around the exact denoiser of N(0, s_d²) data, returned as
    ε / x0 / v / flow velocity: keeps every prediction type's trajectory at a sane scale.
    alpha_sigma(t) -> (α_t, σ_t) of the scheduler's process at the model's timesteps t."""

    def __init__(self, alpha_sigma, prediction: str, channels: int = 3, s_data: float = 0.5):
        g = torch.Generator().manual_seed(0)
        self.weight = torch.randn(channels, channels, generator=g) * 0.5
        self.bias = torch.randn(channels, generator=g) * 0.1
        self.alpha_sigma, self.prediction, self.s_data = alpha_sigma, prediction, s_data
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        a, s = self.alpha_sigma(t)
        shape = (-1,) + (1,) * (x.dim() - 1)
        a, s = a.reshape(shape).float(), s.reshape(shape).float()
        bias = self.bias.reshape(1, -1, *[1] * (x.dim() - 2))
        conv = torch.einsum("oc,nc...->no...", self.weight, x) + bias
        x0 = a * self.s_data ** 2 * x / (a * a * self.s_data ** 2 + s * s) \
            + 0.1 * torch.tanh(conv + t.float().reshape(shape) / 1000.0)
        eps = (x - a * x0) / s
        return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0, "flow_prediction": eps - x0}[
            self.prediction]


def _scheduler(prediction_type, order, variant, karras, steps, final="zero", lower_order_final=True,
               disable_corrector=(), flow=False):
    sched = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction_type, solver_order=order,
        solver_type=variant, use_karras_sigmas=karras, final_sigmas_type=final,
        lower_order_final=lower_order_final, disable_corrector=list(disable_corrector), use_flow_sigmas=flow)
    sched.set_timesteps(steps)
    return sched


def _model(sched, prediction_type):
    if prediction_type == "flow_prediction":
        return ToyModel(lambda t: (1 - t.double() / 1000, t.double() / 1000), prediction_type)
    ac = sched.alphas_cumprod.double()
    at = lambda t: ac[t.round().long()]  # noqa: E731  (DiscreteVPDenoiser(quantize=True) passes float t)
    return ToyModel(lambda t: (at(t).sqrt(), (1 - at(t)).sqrt()), prediction_type)


def _diffusers_loop(sched, model, x, corrector):
    """The scheduler's loop; bh1 ends in NaN at a final σ = 0 (B1 = −∞ times an empty sum), so the final
    first-order step's limit x_n = D_{n−1} (the stored converted output) stands in for it there."""
    if not corrector:
        sched.disable_corrector = list(range(len(sched.timesteps)))
    for t in sched.timesteps:
        x = sched.step(model(x, t.expand(x.shape[0])), t, x).prev_sample
    if not torch.isfinite(x).all() and float(sched.sigmas[-1]) == 0.0 and sched.config.solver_type == "bh1":
        x = sched.model_outputs[-1]
    return x


def _our_table(sched, prediction_type, order, variant, corrector, **kw):
    space = "flow" if sched.config.use_flow_sigmas else "vp"
    table = unipc(sched.sigmas.double().numpy(), order=order, variant=variant, corrector=corrector,
                  disable_corrector=sched.config.disable_corrector, space=space,
                  prediction=PREDICTIONS[prediction_type],
                  lower_order_final=sched.config.lower_order_final, **kw)
    return dataclasses.replace(table, timesteps=sched.timesteps.numpy()), space


def parity(prediction_type, order, variant, corrector, karras, steps, backend="reference", **sched_kw):
    """Relative L2 error of our whole loop against diffusers', and the table."""
    sched = _scheduler(prediction_type, order, variant, karras, steps, **sched_kw)
    table, space = _our_table(sched, prediction_type, order, variant, corrector)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    ref_model, our_model = _model(sched, prediction_type), _model(sched, prediction_type)
    ref = _diffusers_loop(sched, ref_model, x.clone(), corrector)
    ours = run_table(_Plain(our_model, PREDICTIONS[prediction_type], space), x.clone(), table, disable=True,
                     backend=backend)
    assert our_model.calls == ref_model.calls == len(table) == steps  # one row per model evaluation
    assert torch.isfinite(ref).all()
    return float((ours - ref).norm() / ref.norm()), table


# prediction_type, solver_order, solver_type, corrector, use_karras_sigmas, steps
CONFIGS = list(itertools.product(["epsilon", "v_prediction", "sample"], [1, 2, 3], ["bh1", "bh2"],
                                 [True, False], [False, True], [10, 25]))


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("prediction_type,order,variant,corrector,karras,steps", CONFIGS)
def test_matches_diffusers_unipc(prediction_type, order, variant, corrector, karras, steps, backend):
    err, table = parity(prediction_type, order, variant, corrector, karras, steps, backend)
    assert err <= TOL, err
    assert table.history == (order if corrector else order - 1) <= ops.table.MAX_HISTORY


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order,lower_order_final,disable_corrector", [
    (3, True, ()), (3, False, ()), (2, False, ()), (3, True, (0, 3, 4)), (2, True, (1, 7))])
def test_final_sigma_min_lower_order_and_disabled_corrector(variant, order, lower_order_final,
                                                            disable_corrector, backend):
    """A final σ > 0 (every step has the full B(h) terms, bh1 included; lower_order_final=False is finite),
    and diffusers' disable_corrector step list."""
    for prediction_type in ["epsilon", "v_prediction"]:  # (Karras + sigma_min repeats σ_min: a zero step)
        err, _ = parity(prediction_type, order, variant, True, False, 10, backend, final="sigma_min",
                        lower_order_final=lower_order_final, disable_corrector=disable_corrector)
        assert err <= TOL, (prediction_type, err)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("order", [2, 3])
def test_flow_sigmas(order, backend):
    """use_flow_sigmas with flow_prediction: "flow" space (α = 1 − s, σ = s)."""
    err, _ = parity("flow_prediction", order, "bh2", True, False, 12, backend, flow=True)
    assert err <= TOL, err


@pytest.mark.parametrize("backend", _backends())
def test_the_corrector_matters(backend):
    """The parity above would catch a missing or misplaced corrector: UniC moves the result far beyond TOL."""
    outs = []
    for corrector in (True, False):
        sched = _scheduler("epsilon", 2, "bh2", False, 10)
        table, space = _our_table(sched, "epsilon", 2, "bh2", corrector)
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
        outs.append(run_table(_Plain(_model(sched, "epsilon"), "epsilon", space), x, table, disable=True,
                              backend=backend))
    assert float((outs[0] - outs[1]).norm() / outs[1].norm()) > 100 * TOL


def test_history_slots_and_rows():
    sig = _scheduler("epsilon", 3, "bh2", False, 10).sigmas.double().numpy()
    for order, corrector, slots in [(1, False, 0), (1, True, 1), (2, False, 1), (2, True, 2), (3, False, 2),
                                    (3, True, 3)]:
        table = unipc(sig, order=order, corrector=corrector)
        assert len(table) == 10 and table.history == slots and table.history <= ops.table.MAX_HISTORY
        writes = table.coefs[:, ops.table.WRITE_D]
        assert (writes == (np.arange(10) % slots if slots else -1)).all()
        assert not table.stochastic
    with pytest.raises(ValueError, match="order"):
        unipc(sig, order=4)
    with pytest.raises(ValueError, match="variant"):
        unipc(sig, variant="bh3")
    with pytest.raises(ValueError, match="sigma = 0"):
        unipc(sig, order=2, lower_order_final=False)


@pytest.mark.parametrize("backend", _backends())
def test_sample_unipc_k_diffusion_style_matches_diffusers(backend):
    """sample_unipc in σ-space ("ve", x = x0 + σ̃ε) with a DiscreteVPDenoiser (t quantized to the
    scheduler's integer timesteps) is diffusers' sampler on x = αx0 + σε: x_ve = x_vp/α, equal at σ = 0."""
    for prediction_type, order, variant in [("epsilon", 3, "bh2"), ("v_prediction", 2, "bh1")]:
        sched = _scheduler(prediction_type, order, variant, False, 10)
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
        ref = _diffusers_loop(sched, _model(sched, prediction_type), x.clone(), True)
        sig = sched.sigmas.double()
        den = DiscreteVPDenoiser(_model(sched, prediction_type), sched.alphas_cumprod,
                                 prediction=PREDICTIONS[prediction_type], quantize=True)
        ours = sample_unipc(den, x * float((1 + sig[0] ** 2).sqrt()), sig, order=order, variant=variant,
                            disable=True, backend=backend)
        err = float((ours - ref).norm() / ref.norm())
        assert err <= TOL, (prediction_type, order, variant, err)
