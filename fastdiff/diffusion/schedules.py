"""β schedules (DDPM §4 linear; Improved DDPM §3.2 eq. 17 cosine), guided-diffusion's names and values."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

SCHEDULE_NAMES = ("linear", "cosine")


def _check_num_timesteps(num_diffusion_timesteps) -> int:
    if isinstance(num_diffusion_timesteps, bool) or int(num_diffusion_timesteps) != num_diffusion_timesteps:
        raise TypeError(f"num_diffusion_timesteps must be an integer, got {num_diffusion_timesteps!r}")
    if num_diffusion_timesteps <= 0:
        raise ValueError(f"num_diffusion_timesteps must be > 0, got {num_diffusion_timesteps}")
    return int(num_diffusion_timesteps)


def cosine_alpha_bar(t: float) -> float:
    """ᾱ(t) = cos²((t + s)/(1 + s) · π/2) with s = 0.008, t ∈ [0, 1] (Improved DDPM eq. 17, unnormalised)."""
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """β: float64 [T] for `schedule_name` in ("linear", "cosine").

    "linear": DDPM's 1e-4 .. 0.02 over 1000 steps, both ends scaled by 1000/T so that any T gives a similar
    process; "cosine": `betas_for_alpha_bar` of Improved DDPM's ᾱ(t) (eq. 17), β clipped at 0.999.
    """
    T = _check_num_timesteps(num_diffusion_timesteps)
    if schedule_name == "linear":
        scale = 1000 / T
        if scale * 0.02 >= 1.0:  # β_T = 1 makes ᾱ_T = 0: x̂0 = x_T/√ᾱ_T is undefined and every sampler returns NaN
            raise ValueError(f"num_diffusion_timesteps must be > 20 for the linear schedule (β_T = 0.02·1000/T "
                             f"reaches 1 at T = 20), got {T}; use more steps, or the cosine schedule")
        return np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64)
    if schedule_name == "cosine":
        return betas_for_alpha_bar(T, cosine_alpha_bar)
    raise ValueError(f"schedule_name must be one of {list(SCHEDULE_NAMES)}, got {schedule_name!r}")


def betas_for_alpha_bar(num_diffusion_timesteps: int, alpha_bar: Callable[[float], float],
                        max_beta: float = 0.999) -> np.ndarray:
    """β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), max_beta) for i = 0..T-1 (Improved DDPM eq. 17 discretised).

    alpha_bar: t ∈ [0, 1] -> cumulative product of (1 − β) up to t; max_beta < 1 avoids the singularity at t = 1.
    Returns float64 [T].
    """
    T = _check_num_timesteps(num_diffusion_timesteps)
    if not 0.0 < max_beta <= 1.0:
        raise ValueError(f"max_beta must lie in (0, 1], got {max_beta}")
    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return np.array(betas, dtype=np.float64)
