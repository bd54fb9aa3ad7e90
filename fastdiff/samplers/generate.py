"""Draw many samples from a trained ε-model in fixed-size chunks with the fused DDPM / DDIM samplers, with
class labels and classifier-free guidance (Ho & Salimans 2022, eq. 6: ε̃ = (1 + w)·ε(x, y) − w·ε(x, ∅)).

Chunk b of `batch_size` samples starts from Philox noise of seed `chunk_seed(seed, b)` and draws its step noise
in-kernel from the same seed, so sample k is the same whoever computes it: ranks take chunks b ≡ rank
(mod world_size) and the union does not depend on the number of processes.
"""
from __future__ import annotations

import math

import torch

from fastdiff import ops
from fastdiff.diffusion import space_timesteps
from fastdiff.samplers.ddim import sample_ddim
from fastdiff.samplers.ddpm import sample_ddpm

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


@torch.no_grad()
def generate(model, alphas_cumprod, num_samples: int, shape, *, sampler: str = "ddim", steps: int = 50,
             eta: float = 0.0, var_type: str = "fixed_large", labels: torch.Tensor | None = None,
             guidance: float = 0.0, null_label: int | None = None, clip_denoised: bool = True, seed: int = 0,
             batch_size: int = 256, device="cpu", rank: int = 0, world_size: int = 1,
             progress: bool = False) -> torch.Tensor:
    """Samples [num_samples, *shape] (this rank's chunks only when world_size > 1, in chunk order).

    model(x, t[, y]) -> ε (C or 2C channels); alphas_cumprod: [T] of the trained process; sampler "ddpm" (ancestral,
    `var_type` as ops.ddpm_step) or "ddim" (η = eta); labels: int64 [num_samples] class of each sample (None:
    unconditional); guidance w ≥ 0 needs `null_label` (the label-dropout class); w = 0 is the plain conditional model.
    """
    if sampler not in SAMPLER_KINDS:
        raise ValueError(f"sampler must be one of {SAMPLER_KINDS}, got {sampler!r}")
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
    if labels is not None and labels.shape != (num_samples,):
        raise ValueError(f"labels must have shape [{num_samples}], got {tuple(labels.shape)}")
    if guidance < 0:
        raise ValueError(f"guidance must be >= 0, got {guidance}")
    if guidance > 0 and (labels is None or null_label is None):
        raise ValueError("classifier-free guidance > 0 needs labels and null_label (a model trained with p_uncond)")
    timesteps = sampling_timesteps(len(alphas_cumprod), steps)
    outs = []
    for b in range(rank, math.ceil(num_samples / batch_size), world_size):
        lo, hi = b * batch_size, min(num_samples, (b + 1) * batch_size)
        s = chunk_seed(seed, b)
        x = ops.randn_like(torch.empty((hi - lo, *shape), device=device), seed=s)
        extra = uncond = None
        if labels is not None:
            y = labels[lo:hi].to(device)
            extra = {"y": y}
            uncond = {"y": torch.full_like(y, null_label)} if guidance > 0 else None
        kw = dict(alphas_cumprod=alphas_cumprod, clip_denoised=clip_denoised, seed=s, disable=not progress,
                  guidance_scale=1.0 + guidance if guidance > 0 else None, uncond_args=uncond)
        if sampler == "ddpm":
            outs.append(sample_ddpm(model, x, timesteps, extra, var_type=var_type, **kw))
        else:
            outs.append(sample_ddim(model, x, timesteps, extra, eta=eta, **kw))
    if not outs:
        return torch.empty((0, *shape), device=device)
    return torch.cat(outs)
