"""Negative log-likelihood in bits/dim of a diffusion model over a data set (Improved DDPM §3, Table 2).

`bits_per_dim` averages guided-diffusion's `calc_bpd_loop` total (the full variational bound: prior KL L_T,
the KL terms L_{T-1}..L_1 and the discretised decoder NLL L_0, each with one fresh x_t per sample) over the
data in batches. It draws x_t from torch's global RNG (torch.randn_like), so seed it (torch.manual_seed) for a
reproducible estimate.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm


def _data_tensor(data) -> torch.Tensor:
    """data as a tensor [N, ...]: a tensor itself, or an ArrayDataset's .x."""
    x = getattr(data, "x", data)
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.dtype.is_floating_point:
        raise TypeError(f"data must be a floating tensor [N, ...] or an ArrayDataset, got {type(data).__name__}")
    return x


def bits_per_dim(diffusion, model, data, batch_size: int = 256, clip_denoised: bool = True,
                 model_kwargs_fn: Callable[[torch.Tensor], dict] | None = None, progress: bool = True) -> dict:
    """Mean total bits/dim of `data` under `model` (Improved DDPM eqs. 4-7, via diffusion.calc_bpd_loop).

    diffusion: a fastdiff.diffusion.GaussianDiffusion (or SpacedDiffusion); model(x_t, t, **kwargs);
    data: [N, C, ...] in [-1, 1] on the model's device (or an ArrayDataset); model_kwargs_fn(idx) -> kwargs for
    the rows idx: int64 [B] of a batch (e.g. `lambda idx: {"y": labels[idx]}`). Returns {"bpd": mean,
    "stderr": std / √N of the per-sample bits/dim, "n": N}; stderr is 0.0 when N = 1.
    """
    x = _data_tensor(data)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("data must not be empty")
    totals = []
    for start in tqdm(range(0, n, batch_size), desc="bits/dim", unit="batch", disable=not progress):
        idx = torch.arange(start, min(start + batch_size, n), device=x.device)
        kwargs = model_kwargs_fn(idx) if model_kwargs_fn is not None else None
        out = diffusion.calc_bpd_loop(model, x[idx], clip_denoised=clip_denoised, model_kwargs=kwargs)
        totals.append(out["total_bpd"].detach().double().cpu())
    total = torch.cat(totals)
    stderr = float(total.std(unbiased=True)) / math.sqrt(n) if n > 1 else 0.0
    return {"bpd": float(total.mean()), "stderr": stderr, "n": n}
