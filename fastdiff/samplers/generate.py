"""Draw many samples from a trained ε-model in fixed-size chunks with any fused sampler: DDPM / DDIM with class
labels and any mix of classifier-free, classifier and discriminator guidance (`fastdiff.samplers.guidance`), and
the σ-space solvers (Euler, Heun, DPM-Solver++, UniPC, ...; `fastdiff.samplers.solvers`) and LCM with
classifier-free guidance.

Chunk b of `batch_size` samples starts from Philox noise of seed `chunk_seed(seed, b)` and draws its step noise
in-kernel from the same seed, so sample k is the same whoever computes it: ranks take chunks b ≡ rank
(mod world_size) and the union does not depend on the number of processes.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch

import numpy as np

from fastdiff import ops, schedules
from fastdiff.ops import common as C
from fastdiff.schedules import space_timesteps
from fastdiff.errors import check_int
from fastdiff.samplers import solvers
from fastdiff.samplers.ddim import sample_ddim
from fastdiff.samplers.ddpm import sample_ddpm
from fastdiff.samplers.guidance import GuidanceSpec

SIGMA_SAMPLERS = tuple(name for name in solvers.SAMPLERS if name != "flow_euler")
SAMPLER_KINDS = ("ddpm", "ddim", "lcm") + SIGMA_SAMPLERS
SIGMA_SCHEDULES = ("karras", "exponential", "polyexponential", "uniform")


def sampling_sigmas(denoiser: solvers.DiscreteVPDenoiser, steps: int, schedule: str) -> np.ndarray:
    """`steps` σ's from the model's σ_max down to its σ_min, plus a final 0: Karras et al. (2022) eq. 5 (ρ = 7),
    log-linear ("exponential"), polyexponential (ρ = 1), or "uniform" in the training timesteps."""
    lo, hi = denoiser.sigma_min, denoiser.sigma_max
    if schedule == "karras":
        return schedules.get_sigmas_karras(steps, lo, hi)
    if schedule == "exponential":
        return schedules.get_sigmas_exponential(steps, lo, hi)
    if schedule == "polyexponential":
        return schedules.get_sigmas_polyexponential(steps, lo, hi)
    if schedule == "uniform":
        return denoiser.get_sigmas(steps)
    raise ValueError(f"schedule must be one of {SIGMA_SCHEDULES}, got {schedule!r}")


def sampling_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` model timesteps of range(num_timesteps): DDIM's uniform stride range(0, T, T/steps) when it divides
    T (Song et al. §4.2), else guided-diffusion's even spacing (Improved DDPM §4)."""
    if not isinstance(steps, int) or not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be an int in [1, {num_timesteps}], got {steps!r}")
    if num_timesteps % steps == 0:
        return list(range(0, num_timesteps, num_timesteps // steps))
    return sorted(space_timesteps(num_timesteps, [steps]))


def chunk_seed(seed: int, chunk: int) -> int:
    """The Philox seed of chunk `chunk` of a run seeded `seed`."""
    return (int(seed) * 1_000_003 + int(chunk)) % (1 << 63)


@dataclass(frozen=True)
class SamplerOptions:
    """How `generate` samples. sampler: "ddpm" (ancestral, variance `var_type` as ops.ddpm_step), "ddim" (η =
    eta), "lcm", or a σ-space solver of `fastdiff.samplers.solvers` ("euler", "dpmpp_2m", ...; only classifier-free
    guidance) on the σ schedule `schedule` (SIGMA_SCHEDULES); steps: sampler steps (respaced timesteps for
    ddpm / ddim / lcm, `sampling_timesteps`; σ's for the solvers); clip_denoised: clip x̂0 to [-1, 1]; guidance: the
    classifier-free weight w >= 0 (0: the plain conditional model), or a sequence of `GuidanceSpec`s /
    "KIND=SCALE[,t=LO:HI][,schedule=NAME]" strings; seed: Philox seed of the run (chunk b draws from
    chunk_seed(seed, b)); batch_size: samples per chunk. var_type and clip_denoised default as in fastdiff.ops."""
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    schedule: str = "karras"
    var_type: str = "fixed_small"
    clip_denoised: bool = False
    guidance: object = 0.0
    seed: int = 0
    batch_size: int = 256

    def __post_init__(self):
        if self.sampler not in SAMPLER_KINDS:
            raise ValueError(f"sampler must be one of {SAMPLER_KINDS}, got {self.sampler!r}")
        check_int("steps", self.steps, 1)
        C.check_eta(self.eta)
        if self.schedule not in SIGMA_SCHEDULES:
            raise ValueError(f"schedule must be one of {SIGMA_SCHEDULES}, got {self.schedule!r}")
        C.var_type_code(self.var_type)
        if not isinstance(self.clip_denoised, bool):
            raise TypeError(f"clip_denoised must be a bool, got {self.clip_denoised!r}")
        check_int("seed", self.seed, 0)
        check_int("batch_size", self.batch_size, 1)
        guidance_specs(self.guidance)


@torch.no_grad()
def generate(model, alphas_cumprod, num_samples: int, shape, options: SamplerOptions | None = None, *,
             labels: torch.Tensor | None = None, null_label: int | None = None, conditional: bool = True,
             classifier=None, discriminator=None, device="cpu", rank: int = 0, world_size: int = 1,
             progress: bool = False, **keyword_options) -> torch.Tensor:
    """Samples [num_samples, *shape] (this rank's chunks only when world_size > 1, in chunk order).

    model(x, t[, y]) -> ε (C or 2C channels); alphas_cumprod: [T] of the trained process; options: the sampler
    (`SamplerOptions`); labels: int64 [num_samples] class of each sample (None: unconditional). Guidance terms: cfg
    needs `null_label` (the label-dropout class), cg a `classifier` (targets: labels), dg a `discriminator`.
    conditional=False feeds the model the null class (or no y when null_label is None), so labels are only
    classifier-guidance targets. The 0.1 keyword options (sampler=, steps=, ...) still work, with a
    DeprecationWarning and 0.1's defaults (var_type "fixed_large", clip_denoised True).
    """
    if keyword_options:
        unknown = sorted(set(keyword_options) - {f.name for f in dataclasses.fields(SamplerOptions)})
        if unknown:
            raise TypeError(f"generate() got unexpected keyword arguments {unknown}")
        warnings.warn("generate(..., sampler=..., steps=..., ...): pass options=SamplerOptions(...) instead; keyword "
                      "sampler options stop working in fastdiff 0.3", DeprecationWarning, stacklevel=3)
        options = dataclasses.replace(options or _KEYWORD_DEFAULTS, **keyword_options)
    options = SamplerOptions() if options is None else options
    if not isinstance(options, SamplerOptions):
        raise TypeError(f"options must be a SamplerOptions, got {type(options).__name__}")
    check_int("num_samples", num_samples, 1)
    sampler, eta, var_type, seed, batch_size = (options.sampler, options.eta, options.var_type, options.seed,
                                                options.batch_size)
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.shape != (num_samples,) or labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64 [{num_samples}], got {labels.dtype} {tuple(labels.shape)}")
        if int(labels.min()) < 0 or (null_label is not None and int(labels.max()) >= null_label):
            raise ValueError(f"labels must lie in [0, {null_label if null_label is not None else 'K'}), got "
                             f"values in [{int(labels.min())}, {int(labels.max())}]")
    specs = guidance_specs(options.guidance)
    if any(g.kind == "cfg" for g in specs) and (labels is None or null_label is None or not conditional):
        raise ValueError("classifier-free guidance needs labels, null_label (a model trained with p_uncond) and "
                         "conditional=True")
    for g in specs:  # every missing model is reported before sampling starts
        g.build(labels=labels, null_labels=labels, classifier=classifier, discriminator=discriminator)
    if sampler not in ("ddpm", "ddim") and any(g.kind != "cfg" for g in specs):
        raise ValueError(f"classifier and discriminator guidance run on the ddpm and ddim samplers, not {sampler!r} "
                         f"(which takes classifier-free guidance only)")
    timesteps = sampling_timesteps(len(alphas_cumprod), options.steps)
    outs = []
    for b in range(rank, math.ceil(num_samples / batch_size), world_size):
        lo, hi = b * batch_size, min(num_samples, (b + 1) * batch_size)
        s = chunk_seed(seed, b)
        x = ops.randn_like(torch.empty((hi - lo, *shape), device=device), seed=s)
        extra, y = None, None if labels is None else labels[lo:hi].to(device)
        null = None if null_label is None or y is None else torch.full_like(y, null_label)
        if y is not None and (conditional or null is not None):
            extra = {"y": y if conditional else null}
        terms = [g.build(labels=y, null_labels=null, classifier=classifier, discriminator=discriminator)
                 for g in specs]
        kw = dict(alphas_cumprod=alphas_cumprod, clip_denoised=options.clip_denoised, seed=s, disable=not progress,
                  guidance=terms, labels=y)
        if sampler == "ddpm":
            outs.append(sample_ddpm(model, x, timesteps, extra, var_type=var_type, **kw))
        elif sampler == "ddim":
            outs.append(sample_ddim(model, x, timesteps, extra, eta=eta, **kw))
        else:
            outs.append(_sample_solver(model, x, alphas_cumprod, timesteps, extra, terms, options, s, progress))
    if not outs:
        return torch.empty((0, *shape), device=device)
    return torch.cat(outs)


def _sample_solver(model, x, alphas_cumprod, timesteps, extra, terms, options: SamplerOptions, seed: int,
                   progress: bool) -> torch.Tensor:
    """One chunk with LCM or a σ-space solver: x is unit noise; a classifier-free term becomes the per-step
    cfg_scale column 1 + w(t) at each step's (rounded) model timestep."""
    cfg = next((g for g in terms if g.kind == "cfg"), None)
    num_timesteps = len(alphas_cumprod)
    kw = dict(disable=not progress, seed=seed, clip=1.0 if options.clip_denoised else 0.0,
              uncond_args=None if cfg is None else cfg.uncond_args)
    if options.sampler == "lcm":
        steps_t = sorted(timesteps, reverse=True)
        kw["cfg_scale"] = 1.0 if cfg is None else [1.0 + cfg.weight(t, num_timesteps) for t in steps_t]
        return solvers.sample_lcm(model, x, steps_t, extra, alphas_cumprod=alphas_cumprod, **kw)
    # Integer model timesteps (the nearest training step of each σ, as A1111's CompVis denoisers): models and
    # respaced wrappers that index tables by t accept them, and the update itself still uses the exact σ's.
    den = solvers.DiscreteVPDenoiser(model, alphas_cumprod, quantize=True)
    sigmas = sampling_sigmas(den, options.steps, options.schedule)
    if cfg is not None:
        kw["cfg_scale"] = [1.0 + cfg.weight(int(round(t)), num_timesteps) for t in den.sigma_to_t(sigmas[:-1])]
    sample = solvers.SAMPLERS[options.sampler]
    return sample(den, x * float(sigmas[0]), sigmas, extra, **kw)


def guidance_specs(guidance) -> list[GuidanceSpec]:
    """`generate`'s guidance argument as a list of GuidanceSpec (a number w > 0 is classifier-free guidance)."""
    if isinstance(guidance, (int, float)) and not isinstance(guidance, bool):
        if not math.isfinite(guidance) or guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {guidance}")
        return [GuidanceSpec("cfg", float(guidance))] if guidance > 0 else []
    if isinstance(guidance, (str, GuidanceSpec)):
        guidance = [guidance]
    specs = [g if isinstance(g, GuidanceSpec) else GuidanceSpec.parse(g) for g in guidance]
    kinds = [g.kind for g in specs]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"each guidance kind may appear once, got {kinds}")
    return specs


# generate's keyword defaults before SamplerOptions (0.1): what a call with keyword sampler options builds on.
_KEYWORD_DEFAULTS = SamplerOptions(var_type="fixed_large", clip_denoised=True)
