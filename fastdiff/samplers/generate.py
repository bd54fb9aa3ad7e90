"""Draw many samples from a trained ε-model in fixed-size chunks with the fused DDPM / DDIM samplers, with
class labels and any mix of classifier-free, classifier and discriminator guidance (`fastdiff.samplers.guidance`).

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

from fastdiff import ops
from fastdiff.ops import common as C
from fastdiff.schedules import space_timesteps
from fastdiff.errors import check_int
from fastdiff.samplers.ddim import sample_ddim
from fastdiff.samplers.ddpm import sample_ddpm
from fastdiff.samplers.guidance import GuidanceSpec

SAMPLER_KINDS = ("ddpm", "ddim")


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
    """How `generate` samples. sampler: "ddpm" (ancestral, variance `var_type` as ops.ddpm_step) or "ddim" (η =
    eta); steps: respaced steps (`sampling_timesteps`); clip_denoised: clip x̂0 to [-1, 1]; guidance: the
    classifier-free weight w >= 0 (0: the plain conditional model), or a sequence of `GuidanceSpec`s /
    "KIND=SCALE[,t=LO:HI][,schedule=NAME]" strings; seed: Philox seed of the run (chunk b draws from
    chunk_seed(seed, b)); batch_size: samples per chunk. var_type and clip_denoised default as in fastdiff.ops."""
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
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
        else:
            outs.append(sample_ddim(model, x, timesteps, extra, eta=eta, **kw))
    if not outs:
        return torch.empty((0, *shape), device=device)
    return torch.cat(outs)


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
