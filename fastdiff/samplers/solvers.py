"""k-diffusion-style sampler functions on the one fused step: `sample_<name>(model, x, sigmas, extra_args,
callback, disable, ...)`, each a table builder from `fastdiff.samplers.tables` run by one loop (`run_table`).

`model` is either
- a k-diffusion denoiser: model(x, sigma, **extra_args) -> D (the denoised x0), as k-diffusion's samplers take;
  the step then reads D directly (prediction "x0"); or
- a `Denoiser` (e.g. `DiscreteVPDenoiser` around an ε-, x0- or v-prediction network trained on a discrete VP
  schedule, k-diffusion's DiscreteEpsDDPMDenoiser / DiscreteVDDPMDenoiser): the loop calls the network itself
  and the fused step converts its raw output to D, so that conversion costs no extra pass.
x lives in k-diffusion's σ-space (x = x0 + σε, "ve") except for the flow-matching samplers (x = (1−s)x0 + sε).
"""
from __future__ import annotations

import abc
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from fastdiff import schedules
from fastdiff.ops import common as C
from fastdiff.ops import philox
from fastdiff.ops import table as T
from fastdiff.ops.sampler_step import run as run_step
from fastdiff.samplers import tables
from fastdiff.samplers.unipc import unipc
from fastdiff.samplers._loop import STEP_OFFSET_SHIFT, model_outputs, step_offset


class Denoiser(abc.ABC):
    """A network wrapped for σ-space samplers: the loop calls `inner_model(x·c_in, t, **kw)` with
    (c_in, t) = `model_inputs(sigmas)` and the step converts the raw output per `prediction` in `space`.
    Calling the wrapper returns D like a k-diffusion denoiser (so it also runs under k-diffusion's samplers)."""

    prediction = "x0"
    space = "ve"

    def __init__(self, inner_model: Callable):
        self.inner_model = inner_model

    @abc.abstractmethod
    def model_inputs(self, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(c_in, model timestep) per σ: float64 host arrays."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        s = np.asarray(sigma.detach().double().cpu()).reshape(-1)
        c_in, t = self.model_inputs(s)
        shape = (-1,) + (1,) * (x.dim() - 1)
        out = self.inner_model(x * torch.as_tensor(c_in, dtype=x.dtype, device=x.device).reshape(shape),
                               torch.as_tensor(t, device=x.device), **kwargs)
        alpha, sig = tables.alpha_sigma(self.space, s)
        a_x, a_o = tables.conversion(self.prediction, alpha, sig)
        a_x, a_o = (torch.as_tensor(a, dtype=torch.float32, device=x.device).reshape(shape) for a in (a_x, a_o))
        return (a_x * x.float() + a_o * out[:, :x.shape[1]].float()).to(x.dtype)


class DiscreteVPDenoiser(Denoiser):
    """A network trained on a discrete VP process with ᾱ = alphas_cumprod [T] (DDPM), in σ-space:
    σ_t = √((1 − ᾱ_t)/ᾱ_t), input x·c_in with c_in = 1/√(σ² + 1) = √ᾱ, timestep t(σ) interpolated in log σ
    (k-diffusion's DiscreteEpsDDPMDenoiser / DiscreteVDDPMDenoiser; `quantize` rounds t to the nearest)."""

    def __init__(self, inner_model: Callable, alphas_cumprod, prediction: str = "epsilon", quantize: bool = False):
        super().__init__(inner_model)
        self.sigmas = schedules.vp_sigmas(np.asarray(torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()))
        self.log_sigmas = np.log(self.sigmas)
        self.prediction = C.prediction_name(prediction) if prediction != "flow" else prediction
        self.quantize = quantize

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: np.ndarray) -> np.ndarray:
        """Timestep of σ: the index interpolated in log σ, or the nearest one when quantized (int64)."""
        return schedules.sigma_to_t(sigma, self.sigmas, quantize=self.quantize)

    def get_sigmas(self, n: int) -> np.ndarray:
        """n σ's evenly spaced in t from T−1 to 0, plus a final 0 (k-diffusion's DiscreteSchedule.get_sigmas)."""
        t = np.linspace(len(self.sigmas) - 1, 0, n)
        return np.append(np.exp(np.interp(t, np.arange(len(self.sigmas)), self.log_sigmas)), 0.0)

    def model_inputs(self, sigmas):
        sigmas = np.asarray(sigmas, dtype=np.float64)
        return 1.0 / np.sqrt(sigmas ** 2 + 1.0), self.sigma_to_t(sigmas)


class _Plain:
    """A model called as model(x, sig, **kw) whose output the step converts per `prediction` in `space`."""

    def __init__(self, model, prediction: str, space: str):
        self.inner_model, self.prediction, self.space = model, prediction, space

    def model_inputs(self, sigmas):
        sigmas = np.asarray(sigmas, dtype=np.float64)
        return np.ones_like(sigmas), sigmas


def _wrap(model, prediction: str | None, space: str):
    if isinstance(model, Denoiser):
        if prediction is not None:
            raise ValueError("prediction is the Denoiser's own (model.prediction); do not pass it as well")
        return model
    return _Plain(model, prediction or "x0", space)


def run_table(model, x: torch.Tensor, table: tables.StepTable, extra_args: dict | None = None, callback=None,
              disable=None, *, uncond_args: dict | None = None, noise_sampler=None, seed: int | None = None,
              generator: torch.Generator | None = None, backend: str | None = None, desc: str = "sampling",
              cfg_rescale: float = 0.0):
    """Run a sampler's table: per row one model evaluation (doubled batch under classifier-free guidance) and
    one fused `sampler_step`. model: a `Denoiser` or `_Plain` wrapper; x: [N, C, ...] the initial sample.

    Noise for rows with c_z ≠ 0: noise_sampler(σ_i, σ_{i+1}) (k-diffusion's convention, step σ's as 0-dim
    tensors), else in-kernel Philox keyed by `seed` (drawn from `generator` / torch's default generator when
    None) at offset step_offset(row). callback({"x", "i", "sigma", "sigma_hat", "denoised"}) once per step
    with the x before it and D of its first model evaluation, as k-diffusion calls it. cfg_rescale: φ of
    classifier-free guidance rescale (`rescale_outputs`; needs a per-sample reduction: ~8 eager ops per step
    before the fused step, not fused).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be the initial sample of shape [N, C, ...], got {getattr(x, 'shape', x)}")
    extra_args = extra_args or {}
    n, rows = x.shape[0], len(table)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    tab = table.tensor(x.device, dtype)
    history = x.new_zeros((table.history, *x.shape)) if table.history else None
    step_rows = torch.arange(rows, device=x.device).unsqueeze(1).expand(rows, n)
    c_in, model_t = model.model_inputs(table.sigmas)
    if table.timesteps is not None:
        model_t = table.timesteps
    model_t = torch.as_tensor(np.asarray(model_t), device=x.device).unsqueeze(1).expand(rows, n)
    scale_in = [None if c == 1.0 else float(c) for c in c_in]
    noisy = table.noisy_rows()
    if noisy.any() and noise_sampler is None:
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator).item())
        philox.check_seed_offset(seed, 0)
        if x.numel() >= 1 << STEP_OFFSET_SHIFT:
            raise ValueError(f"in-kernel noise needs N·M < 2^32 elements per step, x has {x.numel()}")
    step_sigmas = _step_sigmas(table)
    first = np.r_[True, table.step[1:] != table.step[:-1]]
    for r in tqdm(range(rows), desc=desc, disable=disable):
        x_in = x if scale_in[r] is None else x * scale_in[r]
        out, out_u = model_outputs(model.inner_model, x_in, model_t[r], extra_args, uncond_args)
        C.check_model_output("model_output", out, x)
        if table.var_mode and out.shape[1] != 2 * x.shape[1]:
            raise ValueError(f"a learned-variance table needs model outputs with 2C = {2 * x.shape[1]} channels, "
                             f"got {out.shape[1]}")
        if out_u is not None:
            C.check_model_output("model_output_uncond", out_u, x)
            if cfg_rescale:
                out, out_u = rescale_outputs(out, out_u, float(table.coefs[r, T.CFG_SCALE]), cfg_rescale,
                                             x.shape[1])
        noise, row_seed = None, -1
        if noisy[r] and noise_sampler is not None:
            sigma, sigma_next = step_sigmas[int(table.step[r])]
            noise = _checked_noise(noise_sampler(torch.tensor(sigma), torch.tensor(sigma_next)), x)
        elif noisy[r]:
            row_seed = seed
        # The table, rows, history and seed were checked once above: the step itself runs unchecked (no host work)
        x_next, denoised = run_step(x, out, out_u, tab, step_rows[r], history, table.var_mode, noise, row_seed,
                                    step_offset(r), True, None, backend)
        if callback is not None and first[r]:
            sigma = torch.tensor(step_sigmas[int(table.step[r])][0])
            callback({"x": x, "i": int(table.step[r]), "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        x = x_next
    return x


def rescale_outputs(out: torch.Tensor, out_u: torch.Tensor, scale: float, phi: float, channels: int):
    """Classifier-free guidance rescale (Lin et al. 2023 §3.4, eqs. 15-16): with o = o_u + s(o_c − o_u), the
    guided output becomes o·k, k = φ·std(o_c)/std(o) + 1 − φ per sample (std over all but the batch dim). As k
    scales o linearly, the step's own combine of (k·o_c, k·o_u) gives it. out, out_u: [N, C or 2C, ...] with
    C = channels; returns both scaled (their first C channels; variance channels unchanged)."""
    c = channels
    o_c, o_u = out[:, :c].float(), out_u[:, :c].float()
    o = o_u + scale * (o_c - o_u)
    dims = list(range(1, o.dim()))
    k = phi * o_c.std(dim=dims, keepdim=True) / o.std(dim=dims, keepdim=True) + (1.0 - phi)
    scaled = lambda t: torch.cat([(t[:, :c].float() * k).to(t.dtype), t[:, c:]], dim=1)  # noqa: E731
    return scaled(out), scaled(out_u)


def _checked_noise(noise, x: torch.Tensor) -> torch.Tensor:
    """A noise sampler's tensor: x's shape, device and dtype (cast from another float dtype, as k-diffusion adds it)."""
    if not isinstance(noise, torch.Tensor) or noise.shape != x.shape or noise.device != x.device:
        raise ValueError(f"noise_sampler must return a tensor of x's shape {tuple(x.shape)} on {x.device}, got "
                         f"{getattr(noise, 'shape', type(noise).__name__)}")
    return noise.to(x.dtype)


def _step_sigmas(table: tables.StepTable) -> list[tuple[float, float]]:
    """(σ_i, σ_{i+1}) of each sampler step, for noise samplers and callbacks (as 0-dim float32 tensors there)."""
    starts = [float(table.sigmas[np.flatnonzero(table.step == i)[0]]) for i in range(int(table.step.max()) + 1)]
    ends = starts[1:] + [0.0]
    return list(zip(starts, ends))


def _sample(builder, model, x, sigmas, extra_args, callback, disable, *, prediction=None, space="ve",
            cfg_scale=1.0, uncond_args=None, clip: float = 0.0, noise_sampler=None, seed=None, generator=None,
            backend=None, cfg_rescale: float = 0.0, **options):
    model = _wrap(model, prediction, space)
    sig = np.asarray(torch.as_tensor(sigmas, dtype=torch.float64).cpu()) if not isinstance(sigmas, np.ndarray) \
        else sigmas.astype(np.float64)
    if uncond_args is None and not np.all(np.asarray(cfg_scale) == 1.0):
        raise ValueError("cfg_scale needs uncond_args (the model kwargs of the unconditional branch)")
    if options.get("cfg_pp") and uncond_args is None:
        raise ValueError("cfg_pp (CFG++) renoises with the unconditional output: it needs uncond_args")
    table = builder(sig, space=model.space, prediction=model.prediction, clip=clip, cfg_scale=cfg_scale, **options)
    return run_table(model, x, table, extra_args, callback, disable, uncond_args=uncond_args,
                     noise_sampler=noise_sampler, seed=seed, generator=generator, backend=backend,
                     desc=builder.__name__, cfg_rescale=cfg_rescale)


def _doc(builder):
    def deco(fn):
        fn.__doc__ = (f"Sample with `fastdiff.samplers.tables.{builder.__name__}` from x: [N, C, ...] at sigmas[0] "
                      f"through `sigmas` (descending, ending at 0). {fn.__doc__ or ''}\n\n"
                      "Common options: prediction (for a plain model: 'x0' = a k-diffusion denoiser, or 'epsilon' /"
                      " 'v' / 'flow' raw outputs), cfg_scale (a number or one per step) with uncond_args, "
                      "cfg_rescale (φ of guidance rescale), clip (|D| bound, 0: none), noise_sampler(σ, σ_next) or "
                      "seed for the noise, backend.")
        return fn
    return deco


@_doc(tables.euler)
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """cfg_pp=True: CFG++ (guidance scale λ = cfg_scale, typically in (0, 1])."""
    return _sample(tables.euler, model, x, sigmas, extra_args, callback, disable, **options)


@_doc(tables.euler_ancestral)
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None, **options):
    return _sample(tables.euler_ancestral, model, x, sigmas, extra_args, callback, disable, eta=eta,
                   s_noise=s_noise, noise_sampler=noise_sampler, **options)


@_doc(tables.heun)
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    return _sample(tables.heun, model, x, sigmas, extra_args, callback, disable, **options)


@_doc(tables.dpmpp_2m)
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    return _sample(tables.dpmpp_2m, model, x, sigmas, extra_args, callback, disable, **options)


@_doc(tables.dpmpp_2m_sde)
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler=None, solver_type="midpoint", **options):
    return _sample(tables.dpmpp_2m_sde, model, x, sigmas, extra_args, callback, disable, eta=eta, s_noise=s_noise,
                   noise_sampler=noise_sampler, solver_type=solver_type, **options)


@_doc(tables.dpmpp_3m_sde)
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler=None, **options):
    return _sample(tables.dpmpp_3m_sde, model, x, sigmas, extra_args, callback, disable, eta=eta, s_noise=s_noise,
                   noise_sampler=noise_sampler, **options)


@_doc(tables.dpmpp_2s_ancestral)
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                              s_noise=1.0, noise_sampler=None, **options):
    return _sample(tables.dpmpp_2s_ancestral, model, x, sigmas, extra_args, callback, disable, eta=eta,
                   s_noise=s_noise, noise_sampler=noise_sampler, **options)


@_doc(tables.euler)
def sample_flow_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """Flow matching (rectified flow, SD3/Flux): x = (1 − s)x0 + s·ε with sigmas = s from 1 (or below) to 0;
    model(x, s) returns the velocity ε − x0 (prediction 'flow' by default)."""
    options.setdefault("prediction", "flow")
    return _sample(tables.euler, model, x, sigmas, extra_args, callback, disable, space="flow", **options)


def sample_unipc(model, x, sigmas, extra_args=None, callback=None, disable=None, *, order: int = 2,
                 variant: str = "bh2", corrector: bool = True, **options):
    """Sample with UniPC (`fastdiff.samplers.unipc.unipc`) from x: [N, C, ...] at sigmas[0] through `sigmas`
    (descending, ending at 0), one fused step per model evaluation, the corrector included. order 1..3, variant
    'bh1' / 'bh2', corrector on/off; options: disable_corrector, lower_order_final, and the common ones above."""
    return _sample(unipc, model, x, sigmas, extra_args, callback, disable, order=order, variant=variant,
                   corrector=corrector, **options)


def sample_lcm(model, x, timesteps, extra_args=None, callback=None, disable=None, *, alphas_cumprod,
               prediction: str = "epsilon", timestep_scaling: float = 10.0, cfg_scale=1.0, uncond_args=None,
               clip: float = 0.0, noise_sampler=None, seed=None, generator=None, backend=None):
    """Latent Consistency Model sampling (`tables.lcm`) of a VP model(x, t) -> ε / x0 / v over the descending
    `timesteps` (e.g. LCM's 4 of 1000); x: [N, C, ...] the initial noise x_T."""
    table = tables.lcm(alphas_cumprod, timesteps, timestep_scaling=timestep_scaling,
                       prediction=C.prediction_name(prediction), clip=clip, cfg_scale=cfg_scale)
    return run_table(_Plain(model, C.prediction_name(prediction), "vp"), x, table, extra_args, callback, disable, uncond_args=uncond_args,
                     noise_sampler=noise_sampler, seed=seed, generator=generator, backend=backend, desc="lcm")


#: Every σ-space table builder by sampler name (UniPC's lives in its own module).
BUILDERS = {**tables.BUILDERS, "unipc": unipc}
SAMPLERS = {
    "euler": sample_euler, "euler_ancestral": sample_euler_ancestral, "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m, "dpmpp_2m_sde": sample_dpmpp_2m_sde, "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral, "unipc": sample_unipc, "flow_euler": sample_flow_euler,
}
