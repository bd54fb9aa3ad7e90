"""The sampling loop shared by DDPM and DDIM: schedule table, timesteps, model calls, guidance, noise."""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from fastdiff.ops import betas_for_timesteps, step_table

# Step i of a loop draws its in-kernel noise at Philox offset (i + 1) << 32 (the initial noise uses offset 0),
# so sample n of a batch gets the same noise whatever the batch size, as long as N·M < 2^32.
STEP_OFFSET_SHIFT = 32


def step_offset(i: int) -> int:
    """Philox offset of loop step i (0-based, in visiting order)."""
    return (i + 1) << STEP_OFFSET_SHIFT


def prepare_timesteps(timesteps, alphas_cumprod, x: torch.Tensor):
    """The respaced coefficient table [S, NCOEF] and, per visit k (descending), table rows and model timesteps.

    Returns (table, rows [S, N], model_t [S, N]) with row S-1-i used at step i; all on x's device, built once,
    so the loop itself never copies from the host.
    """
    if alphas_cumprod is None:
        raise ValueError("alphas_cumprod (the [T] ᾱ of the process the model was trained on) is required")
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
    if ac.dim() != 1 or ac.numel() == 0:
        raise ValueError(f"alphas_cumprod must be a non-empty 1-D sequence, got shape {tuple(ac.shape)}")
    ts = list(range(ac.numel())) if timesteps is None else sorted(int(t) for t in timesteps)
    table = step_table(betas_for_timesteps(ac.numpy(), ts), device=x.device)
    n = x.shape[0]
    rows = torch.arange(len(ts), device=x.device).unsqueeze(1).expand(len(ts), n).contiguous()
    model_t = torch.tensor(ts, dtype=torch.int64, device=x.device).unsqueeze(1).expand(len(ts), n).contiguous()
    return table, rows, model_t


def run_steps(step: Callable, model, x: torch.Tensor, timesteps, extra_args, *, alphas_cumprod,
              guidance_scale: float | None, uncond_args: dict | None, seed: int | None,
              generator: torch.Generator | None, needs_noise: bool, disable: bool | None, desc: str,
              backend: str | None) -> Iterator[dict]:
    """Yield {"i", "t", "x", "denoised"} after each step; `step(x, out, table, rows, **noise_and_guidance)`
    is the fused op with its sampler-specific options bound."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be the initial noise x_T of shape [N, C, ...], got {getattr(x, 'shape', x)}")
    extra_args = extra_args or {}
    if guidance_scale is not None and uncond_args is None:
        raise ValueError("guidance_scale needs uncond_args (the model kwargs of the unconditional branch)")
    if seed is not None and x.numel() >= 1 << STEP_OFFSET_SHIFT:
        raise ValueError(f"in-kernel noise needs N·M < 2^32 elements per step, x has {x.numel()}")
    table, rows, model_t = prepare_timesteps(timesteps, alphas_cumprod, x)
    steps = rows.shape[0]
    for i in tqdm(range(steps), desc=desc, disable=disable):
        k = steps - 1 - i
        t = model_t[k]
        out = model(x, t, **extra_args)
        kwargs = {"backend": backend, "return_x0": True}
        if guidance_scale is not None:
            kwargs.update(model_output_uncond=model(x, t, **uncond_args), guidance_scale=guidance_scale)
        if seed is not None:
            kwargs.update(seed=seed, offset=step_offset(i))
        elif needs_noise:
            kwargs.update(noise=torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
        x, x0 = step(x, out, table, rows[k], **kwargs)
        yield {"i": i, "t": t, "x": x, "denoised": x0}


def consume(steps: Iterator[dict], x: torch.Tensor, callback) -> torch.Tensor:
    """Run a step generator to the end, calling callback(info) after each step; returns the final x."""
    for info in steps:
        if callback is not None:
            callback(info)
        x = info["x"]
    return x
