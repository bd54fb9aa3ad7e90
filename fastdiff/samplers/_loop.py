"""The sampling loop shared by DDPM and DDIM: schedule table, timesteps, model calls, guidance, noise."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from fastdiff.errors import check_whole_numbers
from fastdiff.ops import common as C
from fastdiff.ops import philox
from fastdiff.ops import table as T
from fastdiff.ops.sampler_step import run as run_step
from fastdiff.ops import betas_for_timesteps, step_table
from fastdiff.ops.ddpm_step import log_variance
from fastdiff.samplers.guidance import ClassifierFree, Guidance, GuidancePlan, weighted_gradient

# Step i of a loop draws its in-kernel noise at Philox offset (i + 1) << 32 (the initial noise uses offset 0),
# so sample n of a batch gets the same noise whatever the batch size, as long as N·M < 2^32.
STEP_OFFSET_SHIFT = 32
_MISSING = object()


def step_offset(i: int) -> int:
    """Philox offset of loop step i (0-based, in visiting order)."""
    return (i + 1) << STEP_OFFSET_SHIFT


def prepare_timesteps(timesteps, alphas_cumprod, x: torch.Tensor):
    """The respaced coefficient table [S, NCOEF] and, per visit k (descending), table rows and model timesteps.

    Returns (table, rows [S, N], model_t [S, N], ts) with row S-1-i used at step i, all on x's device, built once
    so the loop itself never copies from the host; ts: the S model timesteps (ascending) as host ints.
    """
    if alphas_cumprod is None:
        raise ValueError("alphas_cumprod (the [T] ᾱ of the process the model was trained on) is required")
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
    if ac.dim() != 1 or ac.numel() == 0:
        raise ValueError(f"alphas_cumprod must be a non-empty 1-D sequence, got shape {tuple(ac.shape)}")
    if not (bool(((ac >= 0) & (ac <= 1)).all()) and bool((ac[1:] <= ac[:-1]).all())):
        raise ValueError(f"alphas_cumprod must be ᾱ_t = ∏(1 − β_s): non-increasing values in [0, 1], got min "
                         f"{float(ac.min())} max {float(ac.max())}")
    ts = list(range(ac.numel())) if timesteps is None else sorted(check_whole_numbers("timesteps", timesteps))
    table = step_table(betas_for_timesteps(ac.numpy(), ts), device=x.device)
    n = x.shape[0]
    rows = torch.arange(len(ts), device=x.device).unsqueeze(1).expand(len(ts), n).contiguous()
    model_t = torch.tensor(ts, dtype=torch.int64, device=x.device).unsqueeze(1).expand(len(ts), n).contiguous()
    return table, rows, model_t, ts


def run_steps(step_rows: Callable, var_mode: int, model, x: torch.Tensor, timesteps, extra_args, *, alphas_cumprod,
              guidance_scale: float | None, uncond_args: dict | None, seed: int | None,
              generator: torch.Generator | None, needs_noise: bool, disable: bool | None, desc: str,
              backend: str | None, guidance: Sequence[Guidance] = (), labels: torch.Tensor | None = None,
              prediction: str = "epsilon", ddpm_var_type: str | None = None) -> Iterator[dict]:
    """Yield {"i", "t", "x", "denoised"} after each step: per step one model evaluation and one fused
    `sampler_step` on the rows `step_rows(table)` builds once from the respaced schedule table (`ops.ddim_step` /
    `ops.ddpm_step`'s rows with the sampler's options bound, so the loop and the per-step API agree bit for bit;
    `var_mode`: the op's learned-variance mode), each row's classifier-free scale 1 + w(t) filled in.

    guidance: `fastdiff.samplers.guidance` terms (see there); labels: int64 [N] targets of classifier guidance
    (default: extra_args["y"]); ddpm_var_type: the DDPM step's var_type (classifier guidance then shifts the
    mean by w·Σ_t·g), None for DDIM. guidance_scale/uncond_args: diffusers' spelling of a constant
    classifier-free scale s, turned into the `ClassifierFree` term with w = s − 1 (not both).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be the initial noise x_T of shape [N, C, ...], got {getattr(x, 'shape', x)}")
    extra_args = extra_args or {}
    if guidance_scale is not None:  # diffusers' constant scale s: the classifier-free term with w = s − 1
        if uncond_args is None:
            raise ValueError("guidance_scale needs uncond_args (the model kwargs of the unconditional branch)")
        if any(isinstance(g, ClassifierFree) for g in guidance):
            raise ValueError("pass classifier-free guidance either as a ClassifierFree term or as guidance_scale")
        w = C.check_guidance_scale(guidance_scale, uncond_args) - 1.0
        guidance = [*guidance, ClassifierFree(1.0, uncond_args, schedule=lambda t, num_timesteps: w)]
    if seed is not None and x.numel() >= 1 << STEP_OFFSET_SHIFT:
        raise ValueError(f"in-kernel noise needs N·M < 2^32 elements per step, x has {x.numel()}")
    plan = GuidancePlan(guidance, labels=labels if labels is not None else extra_args.get("y"), n=x.shape[0],
                        prediction=prediction, ddpm_mean_shift=ddpm_var_type is not None)
    uncond_args = None if plan.cfg is None else plan.cfg.uncond_args
    table, rows, model_t, host_t = prepare_timesteps(timesteps, alphas_cumprod, x)
    num_timesteps = len(alphas_cumprod)
    steps = rows.shape[0]
    scales = [1.0 if plan.cfg is None else 1.0 + plan.cfg_weight(t, num_timesteps) for t in host_t]
    step_table = step_rows(table)
    step_table[:, T.CFG_SCALE] = torch.tensor(scales, dtype=step_table.dtype).to(x.device)  # one copy, up front
    if seed is not None:
        philox.check_seed_offset(seed, step_offset(steps - 1))
    for i in tqdm(range(steps), desc=desc, disable=disable):
        k = steps - 1 - i
        t = model_t[k]
        out, out_u = model_outputs(model, x, t, extra_args, uncond_args if scales[k] != 1.0 else None)
        for name, o in (("model_output", out), ("model_output_uncond", out_u)):
            if o is not None:
                C.check_model_output(name, o, x)
        if var_mode and out.shape[1] != 2 * x.shape[1]:
            raise ValueError(f"a learned variance needs model outputs with 2C = {2 * x.shape[1]} channels, got "
                             f"{out.shape[1]}")
        eps_grad = weighted_gradient(plan.eps_terms, x, t, num_timesteps)
        if eps_grad is not None:  # ε̂ = ε − √(1 − ᾱ_t)·Σ w·∇f
            shift = -C.gather(table, rows[k], T.SQRT_1M_AC, x.dim(), torch.float32) * eps_grad
            out, out_u = (None if o is None else shift_eps(o, shift) for o in (out, out_u))
        noise = None
        if seed is None and needs_noise:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        mean_grad = weighted_gradient(plan.mean_terms, x, t, num_timesteps)
        # checked above and once before the loop: the step itself runs unchecked (no host work)
        x_prev, x0 = run_step(x, out, out_u, step_table, rows[k], None, var_mode, noise,
                              -1 if seed is None else seed, step_offset(i), True, None, backend)
        if mean_grad is not None:  # μ ← μ + Σ_t·Σ w·∇ log p(y | x_t)
            log_var = log_variance(out, table, rows[k], C.var_type_code(ddpm_var_type), x.shape[1], torch.float32)
            x_prev = (x_prev.float() + log_var.exp() * mean_grad).to(x.dtype)
        x = x_prev
        yield {"i": i, "t": t, "x": x, "denoised": x0}


def model_outputs(model, x: torch.Tensor, t: torch.Tensor, extra_args: dict, uncond_args: dict | None):
    """(conditional output, unconditional output or None). With uncond_args, one forward pass on the doubled
    batch [x; x] when the two kwarg sets stack key by key (same keys; [N, ...] tensors are concatenated, other
    values equal in both), else two passes."""
    if uncond_args is None:
        return model(x, t, **extra_args), None
    n = x.shape[0]
    kwargs = {}
    for key in extra_args.keys() | uncond_args.keys():
        cond, unc = extra_args.get(key, _MISSING), uncond_args.get(key, _MISSING)
        if isinstance(cond, torch.Tensor) and isinstance(unc, torch.Tensor) and cond.shape[:1] == unc.shape[:1] == (n,):
            kwargs[key] = torch.cat([cond, unc.to(cond.device)])
        elif cond is unc or (cond is not _MISSING and not isinstance(cond, torch.Tensor)
                             and not isinstance(unc, torch.Tensor) and cond == unc):
            kwargs[key] = cond
        else:
            return model(x, t, **extra_args), model(x, t, **uncond_args)
    out = model(torch.cat([x, x]), torch.cat([t, t]), **kwargs)
    return out[:n], out[n:]


def shift_eps(model_output: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """model_output with `shift` ([N, C, ...] float32) added to its first C (ε) channels; variance channels kept."""
    c = shift.shape[1]
    eps = (model_output[:, :c].float() + shift).to(model_output.dtype)
    return eps if model_output.shape[1] == c else torch.cat([eps, model_output[:, c:]], dim=1)


def consume(steps: Iterator[dict], x: torch.Tensor, callback) -> torch.Tensor:
    """Run a step generator to the end, calling callback(info) after each step; returns the final x."""
    for info in steps:
        if callback is not None:
            callback(info)
        x = info["x"]
    return x
