"""The per-timestep coefficient table every fused op reads (DDPM eqs. 4, 6, 7; DDIM eq. 12).

All coefficients are computed once in float64 from β (as guided-diffusion does in
numpy) and stored as one [T, NCOEF] table on the device; a kernel gathers row t[n]
for sample n, so no host synchronisation is needed inside a step.
Column indices are mirrored in csrc/include/fastdiff/coefs.h and triton_kernels/_coefs.py.
"""
from __future__ import annotations

import numpy as np
import torch

from fastdiff.errors import check_whole_numbers

AC = 0                   # ᾱ_t
AC_PREV = 1              # ᾱ_{t-1} (1 at t = 0)
SQRT_AC = 2              # √ᾱ_t
SQRT_1M_AC = 3           # √(1 − ᾱ_t)
SQRT_RECIP_AC = 4        # 1/√ᾱ_t
SQRT_RECIPM1_AC = 5      # √(1/ᾱ_t − 1)
POST_COEF1 = 6           # β_t √ᾱ_{t-1} / (1 − ᾱ_t)            (DDPM eq. 7, x̂0 coefficient)
POST_COEF2 = 7           # (1 − ᾱ_{t-1}) √α_t / (1 − ᾱ_t)      (DDPM eq. 7, x_t coefficient)
POST_VAR = 8             # β̃_t = β_t (1 − ᾱ_{t-1}) / (1 − ᾱ_t)
POST_LOGVAR = 9          # log β̃_t, with β̃_0 replaced by β̃_1 (guided-diffusion's clipped log)
LOG_BETA = 10            # log β_t (upper end of Improved-DDPM eq. 15)
FIXED_LARGE_LOGVAR = 11  # log of (β̃_1, β_1, β_2, …): guided-diffusion's FIXED_LARGE
NCOEF = 12


def schedule_coefficients(betas) -> dict[str, np.ndarray]:
    """Every per-t coefficient of the forward process and posterior, float64 [T] arrays, from β: [T]."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    if not ((betas > 0).all() and (betas <= 1).all()):
        raise ValueError(f"betas must lie in (0, 1], got min {betas.min()} max {betas.max()}")
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    post_logvar = np.log(np.append(post_var[1], post_var[1:])) if len(betas) > 1 else np.log(np.maximum(post_var, 1e-20))
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "alphas_cumprod_next": np.append(ac[1:], 0.0),
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1.0),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_logvar,
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        "log_betas": np.log(betas),
        "fixed_large_log_variance": np.log(np.append(post_var[1], betas[1:])) if len(betas) > 1 else np.log(betas),
    }


_COLUMNS = {
    AC: "alphas_cumprod", AC_PREV: "alphas_cumprod_prev", SQRT_AC: "sqrt_alphas_cumprod",
    SQRT_1M_AC: "sqrt_one_minus_alphas_cumprod", SQRT_RECIP_AC: "sqrt_recip_alphas_cumprod",
    SQRT_RECIPM1_AC: "sqrt_recipm1_alphas_cumprod", POST_COEF1: "posterior_mean_coef1",
    POST_COEF2: "posterior_mean_coef2", POST_VAR: "posterior_variance",
    POST_LOGVAR: "posterior_log_variance_clipped", LOG_BETA: "log_betas",
    FIXED_LARGE_LOGVAR: "fixed_large_log_variance",
}


def step_table(betas, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The [T, NCOEF] coefficient table for β: [T] (float64 math, stored as `dtype` on `device`)."""
    coefs = schedule_coefficients(betas)
    table = np.stack([coefs[_COLUMNS[k]] for k in range(NCOEF)], axis=1)
    return torch.as_tensor(table, dtype=dtype, device=device)


def betas_for_timesteps(alphas_cumprod, timesteps) -> np.ndarray:
    """β of the respaced process that visits `timesteps` (Improved DDPM §4: β_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i-1}}).

    alphas_cumprod: [T] of the original process; timesteps: the kept original timesteps.
    Returns β: [S] in ascending timestep order, exactly guided-diffusion's SpacedDiffusion.
    """
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    ts = sorted(check_whole_numbers("timesteps", timesteps))
    if not ts:
        raise ValueError("timesteps must not be empty")
    if len(set(ts)) != len(ts):
        raise ValueError(f"timesteps must be distinct, got {list(timesteps)}")
    if ts[0] < 0 or ts[-1] >= len(ac):
        raise ValueError(f"timesteps must lie in [0, {len(ac)}), got min {ts[0]} max {ts[-1]}")
    kept = ac[ts]
    return 1.0 - kept / np.append(1.0, kept[:-1])


# ----------------------------------------------------------------------------------------- the sampler step table
# The [S, STEP_NCOL] table of `fastdiff.ops.sampler_step` (docs/architecture.md, "Adding a sampler"): one row per model evaluation of a sampler,
# filled in float64 by the sampler's table builder (fastdiff.samplers.tables). Per row:
#   o      = o_u + CFG_SCALE·(o_c − o_u)                       (when an unconditional output is given)
#   D      = clip(A_X·x + A_O·o, ±CLIP)                        (CLIP <= 0: no clipping)
#   x_next = C_X·x + C_D·D + Σ_k C_H+k·H_k + C_Z·σ_var·z       (a history slot with coefficient 0 is not read)
#            + C_O·o + C_OU·o_u                                (the raw outputs: diffusers' unclipped-ε DDIM, CFG++)
# then D is written to history slot WRITE_D and x to slot WRITE_X (-1: none). σ_var is 1, or the learned
# standard deviation exp(½ log σ²) with log σ² = v (learned) or frac·LOGVAR_HI + (1 − frac)·LOGVAR_LO,
# frac = (v + 1)/2 (learned_range, Improved DDPM eq. 15). Mirrored in csrc/include/fastdiff/coefs.h and
# triton_kernels/_coefs.py.
CFG_SCALE = 0
A_X = 1
A_O = 2
CLIP = 3
C_X = 4
C_D = 5
C_Z = 6
C_H = 7                  # C_H + k for history slot k < MAX_HISTORY
MAX_HISTORY = 3
WRITE_D = C_H + MAX_HISTORY  # 10
WRITE_X = WRITE_D + 1        # 11
LOGVAR_HI = WRITE_X + 1      # 12: log β_t
LOGVAR_LO = LOGVAR_HI + 1    # 13: log β̃_t (clipped)
C_O = LOGVAR_LO + 1          # 14: coefficient of the (guided) model output o itself
C_OU = C_O + 1               # 15: coefficient of the unconditional output o_u (0 without one)
STEP_NCOL = C_OU + 1         # 16
VAR_MODES = {"table": 0, "learned": 1, "learned_range": 2}
