"""β schedules (DDPM §4 linear; Improved DDPM §3.2 eq. 17 cosine) and timestep spacing (Improved DDPM §4), with
guided-diffusion's names and values. Plain numpy below the samplers: both the fused samplers and the
guided-diffusion-style `fastdiff.diffusion` build on them."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from fastdiff.errors import check_whole_numbers

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


def _ddim_striding(num_timesteps: int, section_counts: str) -> set:
    """"ddimN": the DDIM paper's integer stride, range(0, T, s) with exactly N elements."""
    try:
        desired_count = int(section_counts[len("ddim"):])
    except ValueError:
        raise ValueError(f"section_counts {section_counts!r} must be 'ddimN' with an integer N") from None
    if not 0 < desired_count <= num_timesteps:
        raise ValueError(f"section_counts {section_counts!r} asks for {desired_count} steps; it must be in "
                         f"[1, num_timesteps = {num_timesteps}]")
    for stride in range(1, num_timesteps + 1):
        if len(range(0, num_timesteps, stride)) == desired_count:
            return set(range(0, num_timesteps, stride))
    raise ValueError(f"section_counts {section_counts!r}: cannot take exactly {desired_count} of "
                     f"{num_timesteps} steps with an integer stride")


def _parse_section_counts(section_counts) -> list[int]:
    if isinstance(section_counts, str):
        try:
            return [int(x) for x in section_counts.split(",")]
        except ValueError:
            raise ValueError(f"section_counts must be 'ddimN' or comma-separated integers, "
                             f"got {section_counts!r}") from None
    counts = check_whole_numbers("section_counts", section_counts)
    if not counts:
        raise ValueError("section_counts must not be empty")
    return counts


def space_timesteps(num_timesteps: int, section_counts) -> set:
    """The kept timesteps: T is cut into len(section_counts) near-equal sections (the first T % K one longer)
    and section i is strided to section_counts[i] evenly spaced, rounded steps.

    E.g. T = 300 with [10, 15, 20]: 10 steps from 0..99, 15 from 100..199, 20 from 200..299.
    section_counts: a list of ints, a comma-separated string of them, or "ddimN" for the DDIM paper's fixed
    integer stride (one section). Returns a set of ints in [0, T).
    """
    if int(num_timesteps) != num_timesteps or num_timesteps <= 0:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    num_timesteps = int(num_timesteps)
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        return _ddim_striding(num_timesteps, section_counts)
    counts = _parse_section_counts(section_counts)
    if sum(counts) > num_timesteps:
        raise ValueError(f"section_counts {section_counts!r} asks for {sum(counts)} steps, more than "
                         f"num_timesteps = {num_timesteps}")
    size_per, extra = divmod(num_timesteps, len(counts))
    start_idx, all_steps = 0, []
    for i, section_count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if section_count < 0 or size < section_count:
            raise ValueError(f"section_counts {section_counts!r}: cannot divide section {i} of {size} steps "
                             f"into {section_count}")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0  # repeated addition (not j·stride) so rounding matches guided-diffusion's steps exactly
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)
