"""The one fused sampler step (docs/architecture.md, "Adding a sampler"): every sampler's update as a row of coefficients.

Per sample n, with row r = step[n] of the [S, STEP_NCOL] table (columns in `fastdiff.ops.table`):

    o      = o_u + w·(o_c − o_u)                         classifier-free guidance (Ho & Salimans eq. 6, w = 1 + w')
    D      = clip(a_x·x + a_o·o)                         the denoised estimate from ε / x0 / v / flow velocity
    x_next = c_x·x + c_D·D + Σ_k c_k·H_k + c_z·σ_var·z   H_k: history slots (earlier D's or x's); z: noise
             + c_o·o + c_ou·o_u                          the raw outputs (unclipped ε of diffusers' DDIM; CFG++)

and D (and x) are written into history slots, so multistep solvers keep their past in device memory and a
whole loop of any sampler stays one CUDA graph. The samplers' math lives in their table builders
(`fastdiff.samplers.tables`); the kernels know nothing about samplers.
"""
from __future__ import annotations

import numpy as np
import torch

from fastdiff.ops import backend as _backend
from fastdiff.ops import common as C
from fastdiff.ops import table as T


def reference(x, model_output, model_output_uncond, table, step, history, var_mode: int, noise, seed: int,
              offset: int, return_denoised: bool, seed_tensor=None):
    """x_next (and D) of one step; writes history in place (module docstring).

    x: [N, C, ...]; model_output(_uncond): [N, C or 2C, ...] (channels C..2C: the learned variance v, read
    from the conditional output when var_mode is 1 or 2); table: [S, STEP_NCOL] float32/float64; step: int64
    [N] rows; history: None or [K, N, C, ...] (K <= MAX_HISTORY, x's dtype, contiguous), updated in place;
    var_mode: 0 (σ_var = 1), 1 (learned: log σ² = v), 2 (learned_range, Improved DDPM eq. 15); c_o·o and c_ou·o_u
    are added after c_D·D, each only where its coefficient is nonzero (c_ou only with an unconditional output);
    noise / seed / seed_tensor as in `fastdiff.ops.ddim_step` (no noise term with none of them).
    Returns (x_next, D) with D empty unless return_denoised. Operation order is the kernels' (each adds the
    terms in this order, in the accumulation dtype).
    """
    acc = C.acc_dtype(x.dtype)
    g = lambda col: C.gather(table, step, col, x.dim(), acc)  # noqa: E731
    xf = x.to(acc)
    channels = x.shape[1]
    o = model_output[:, :channels].to(acc)
    if model_output_uncond is not None:  # o_u + w·(o_c − o_u)
        o_u = model_output_uncond[:, :channels].to(acc)
        o = o_u + g(T.CFG_SCALE) * (o - o_u)
    d = g(T.A_X) * xf + g(T.A_O) * o
    clip = g(T.CLIP)
    d = torch.where(clip > 0, torch.minimum(torch.maximum(d, -clip), clip), d)
    x_next = g(T.C_X) * xf + g(T.C_D) * d
    c_o = g(T.C_O)
    x_next = x_next + torch.where(c_o != 0, c_o * o, 0.0)
    if model_output_uncond is not None:
        c_ou = g(T.C_OU)
        x_next = x_next + torch.where(c_ou != 0, c_ou * o_u, 0.0)
    k_slots = 0 if history is None else history.shape[0]
    for k in range(k_slots):
        c_k = g(T.C_H + k)
        x_next = x_next + torch.where(c_k != 0, c_k * history[k].to(acc), 0.0)
    z = C.step_noise(x, noise, seed, offset, acc, seed_tensor)
    if z is not None:
        c_z = g(T.C_Z)
        if var_mode != 0:
            c_z = c_z * torch.exp(0.5 * learned_log_variance(model_output, table, step, var_mode, channels, acc))
        x_next = x_next + torch.where(c_z != 0, c_z * z, 0.0)
    if k_slots:
        write_d, write_x = (table[step, col].to(torch.int64).reshape_as(g(col)) for col in (T.WRITE_D, T.WRITE_X))
        for k in range(k_slots):  # after every read: a slot may be read and rewritten by the same step
            h = history[k]
            new = torch.where(write_d == k, d.to(h.dtype), torch.where(write_x == k, x, h))
            h.copy_(new)
    return x_next.to(x.dtype), (d.to(x.dtype) if return_denoised else x.new_empty(0))


PREDICTIONS = ("epsilon", "x0", "v", "flow")
ALPHA_FLOOR = 2.0 ** -60  # zero-terminal-SNR schedules reach α = 0, where ε-prediction has no x0 (Lin et al. §3.3)


def conversion(prediction: str, alpha, sigma, xp=np):
    """(a_x, a_o) of D = x0 = a_x·x + a_o·o for model output o at x = α·x0 + σ·ε (numpy arrays, or torch tensors
    with xp=torch): ε: (x − σε)/α (DDPM eq. 15 inverted); x0: o; v (Salimans & Ho §4, v = α̂ε − σ̂x0 on the
    unit-variance input x/√(α²+σ²)): a_x = α/(α²+σ²), a_o = −σ/√(α²+σ²); flow velocity (v = ε − x0, rectified
    flow): x0 = (x − σv)/(α+σ)."""
    if prediction == "epsilon":
        a = xp.clip(alpha, ALPHA_FLOOR, None)
        return 1.0 / a, -sigma / a
    if prediction == "x0":
        return xp.zeros_like(alpha), xp.ones_like(alpha)
    if prediction == "v":
        norm2 = alpha * alpha + sigma * sigma
        return alpha / norm2, -sigma / xp.sqrt(norm2)
    if prediction == "flow":
        return 1.0 / (alpha + sigma), -sigma / (alpha + sigma)
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def learned_log_variance(model_output, table, step, var_mode: int, channels: int, dtype):
    """log σ² of a learned variance (var_mode 1: v itself; 2: Improved DDPM eq. 15 interpolation between
    LOGVAR_LO = log β̃_t and LOGVAR_HI = log β_t with frac = (v + 1)/2); v = model_output[:, C:2C]."""
    v = model_output[:, channels:].to(dtype)
    if var_mode == 1:
        return v
    frac = (v + 1.0) / 2.0
    g = lambda col: C.gather(table, step, col, model_output.dim(), dtype)  # noqa: E731
    return frac * g(T.LOGVAR_HI) + (1.0 - frac) * g(T.LOGVAR_LO)


def check_table_step(x: torch.Tensor, table: torch.Tensor, step) -> torch.Tensor:
    """Validate the step table and row indices; returns step as an int64 [N] tensor on x's device."""
    if not isinstance(table, torch.Tensor) or table.dim() != 2 or table.shape[1] != T.STEP_NCOL:
        raise ValueError(f"table must be a [S, {T.STEP_NCOL}] sampler step table (fastdiff.samplers.tables), got "
                         f"{tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__}")
    return C.check_index_table("table", "step", x, table, step)


def check_history(x: torch.Tensor, history) -> None:
    """history: None or a contiguous [K, N, C, ...] tensor of x's dtype and device, K in 1..MAX_HISTORY."""
    if history is None:
        return
    C.check_float("history", history, like=x)
    if history.dim() != x.dim() + 1 or tuple(history.shape[1:]) != tuple(x.shape) or not (
            1 <= history.shape[0] <= T.MAX_HISTORY):
        raise ValueError(f"history must have shape [K, *x.shape] = [K, {', '.join(map(str, x.shape))}] with "
                         f"1 <= K <= {T.MAX_HISTORY}, got {tuple(history.shape)}")
    if not history.is_contiguous():
        raise ValueError("history must be contiguous (the step writes into it in place)")


def sampler_step(x: torch.Tensor, model_output: torch.Tensor, table: torch.Tensor, step, *,
                 history: torch.Tensor | None = None, var_mode: str | int = "table",
                 model_output_uncond: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                 seed: int | torch.Tensor | None = None, offset: int = 0, return_denoised: bool = False,
                 backend: str | None = None):
    """One step of any sampler, fused into one kernel launch (module docstring; docs/architecture.md, "Adding a sampler").

    x: [N, C, ...]; model_output: [N, C, ...] (or [N, 2C, ...] with learned-variance channels); table:
    [S, STEP_NCOL] (float32, or float64 for float64 x) from a `fastdiff.samplers.tables` builder; step: int64
    [N] row per sample (or an int); history: the sampler's [K, N, C, ...] slots, written in place; var_mode:
    'table' | 'learned' | 'learned_range' (or 0/1/2). Noise: `noise` [N, C, ...] or in-kernel
    Philox(seed, offset + flat index) with seed an int or an int64 [] / [1] device tensor; with neither there is
    no noise term (deterministic tables have c_z = 0). Returns x_next, or (x_next, D) when return_denoised.
    """
    C.check_x(x)
    C.check_model_output("model_output", model_output, x)
    if model_output_uncond is not None:
        C.check_model_output("model_output_uncond", model_output_uncond, x)
    step = check_table_step(x, table, step)
    check_history(x, history)
    mode = var_mode if isinstance(var_mode, int) and not isinstance(var_mode, bool) else T.VAR_MODES.get(var_mode)
    if mode not in T.VAR_MODES.values():
        raise ValueError(f"var_mode must be one of {sorted(T.VAR_MODES)}, got {var_mode!r}")
    if mode != 0 and model_output.shape[1] != 2 * x.shape[1]:
        raise ValueError(f"var_mode={var_mode!r} needs model_output with 2C = {2 * x.shape[1]} channels "
                         f"(output and variance), got {model_output.shape[1]}")
    seed, seed_tensor = C.check_noise_args(x, noise, seed, offset, stochastic=False)
    x_next, d = run(x, model_output, model_output_uncond, table, step, history, mode, noise, seed, int(offset),
                    bool(return_denoised), seed_tensor, backend)
    return (x_next, d) if return_denoised else x_next


def run(x, model_output, model_output_uncond, table, step, history, var_mode: int, noise, seed: int, offset: int,
        return_denoised: bool, seed_tensor=None, backend: str | None = None):
    """The op on already validated arguments (the schema's, as `reference` takes them) on the chosen backend:
    no checks, so no host reads (the step of a CUDA graph, a diffusers scheduler's `step`)."""
    impl = _backend.implementation("sampler_step", _backend.resolve("sampler_step", x.device, backend=backend),
                                   reference)
    return impl(x, model_output, model_output_uncond, table, step, history, var_mode, noise, seed, offset,
                return_denoised, seed_tensor)
