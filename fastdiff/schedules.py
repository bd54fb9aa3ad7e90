"""Noise schedules as plain float64 numpy functions, below the samplers: the fused samplers' coefficient-table
builders and the guided-diffusion-style `fastdiff.diffusion` build on them.

- β schedules (DDPM §4 linear; Improved DDPM §3.2 eq. 17 cosine) and guided-diffusion's timestep striding (Improved
  DDPM §4), with its names and values: `get_named_beta_schedule`, `betas_for_alpha_bar`, `space_timesteps`;
  zero terminal SNR (Lin et al. 2023): `rescale_zero_terminal_snr`;
- diffusers' inference timestep spacings (Lin et al. 2023, Table 2): `inference_timesteps`;
- σ schedules in k-diffusion's convention (descending, length n + 1 with a final 0): `get_sigmas_karras`,
  `get_sigmas_exponential`, `get_sigmas_polyexponential`, `get_sigmas_beta`;
- discrete VP ↔ σ (k-diffusion's DiscreteSchedule): `vp_sigmas`, `sigma_to_t`;
- flow matching (diffusers' FlowMatchEulerDiscreteScheduler, SD3, Flux): `flow_sigmas`, `flow_shift`,
  `flow_time_shift`, `flow_mu`.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np

from fastdiff.errors import check_int, check_number, check_whole_numbers

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


# ------------------------------------------------------------------------------------- argument checks


def _float64_array(name: str, values, *, ndim: int | None = None, min_size: int = 0) -> np.ndarray:
    """`values` (a number, sequence, numpy array or CPU tensor) as a finite float64 numpy array."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a number or an array of numbers, got {values!r}")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a number or an array of numbers (a CPU tensor at most), got "
                        f"{type(values).__name__}: {exc}") from None
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if arr.size < min_size:
        raise ValueError(f"{name} must have at least {min_size} entries, got {arr.size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got a non-finite value at position "
                         f"{np.unravel_index(int(np.argmin(np.isfinite(arr))), arr.shape)}")
    return arr


def _check_in(name: str, arr: np.ndarray, low: float, high: float, *, low_open: bool = False) -> np.ndarray:
    bad = (arr < low) | (arr > high) | ((arr == low) if low_open else False)
    if np.any(bad):
        i = np.unravel_index(int(np.argmax(bad)), arr.shape)
        raise ValueError(f"{name} must lie in {'(' if low_open else '['}{low}, {high}], got {arr[i]} at position "
                         f"{i if arr.ndim else '()'}")
    return arr


def _check_sigma_range(sigma_min, sigma_max) -> tuple[float, float]:
    lo = check_number("sigma_min", sigma_min, 0.0, low_open=True)
    hi = check_number("sigma_max", sigma_max, 0.0, low_open=True)
    if lo >= hi:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min = {lo}, sigma_max = {hi}")
    return lo, hi


def _append_zero(sigmas: np.ndarray) -> np.ndarray:
    return np.concatenate([sigmas, np.zeros(1)])


# ------------------------------------------------------------------------------------ zero terminal SNR


def rescale_zero_terminal_snr(betas):
    """β rescaled so that ᾱ_{T−1} = 0 (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", Algorithm 1): √ᾱ is shifted to end at 0 and scaled to keep √ᾱ_0, then turned back into β.

    betas: [T], T ≥ 2, each in (0, 1]. A numpy array or sequence is computed in float64 (returns float64 numpy
    [T]); a torch tensor is computed with torch in its own dtype (returns a tensor; float32 in, float32 out, bit
    for bit diffusers' `rescale_zero_terminal_snr`, which the diffusers adapters rely on). The last β is 1.
    """
    torch = sys.modules.get("torch")  # a tensor can only come from an already imported torch
    if torch is not None and isinstance(betas, torch.Tensor):
        if betas.dim() != 1 or betas.shape[0] < 2:
            raise ValueError(f"betas must have shape [T] with T >= 2, got {tuple(betas.shape)}")
        cumprod, sqrt, cat = (lambda a: torch.cumprod(a, dim=0)), torch.sqrt, torch.cat
    else:
        betas = _check_in("betas", _float64_array("betas", betas, ndim=1, min_size=2), 0.0, 1.0, low_open=True)
        cumprod, sqrt, cat = np.cumprod, np.sqrt, np.concatenate
    # the same operations in the same order as diffusers, so the float32 torch path matches it exactly
    sqrt_ac = sqrt(cumprod(1.0 - betas))
    first, last = sqrt_ac[0], sqrt_ac[-1]
    sqrt_ac = (sqrt_ac - last) * (first / (first - last))
    ac = sqrt_ac ** 2
    return 1 - cat([ac[0:1], ac[1:] / ac[:-1]])


# ---------------------------------------------------------------------------------- inference timesteps

SPACINGS = ("leading", "linspace", "trailing")


def inference_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str = "leading",
                        steps_offset: int = 0) -> np.ndarray:
    """The N inference timesteps, descending, int64 [N]: diffusers' three spacings (Lin et al. 2023, Table 2), as
    DDPMScheduler / DDIMScheduler.set_timesteps computes them, with T = num_train_timesteps, N =
    num_inference_steps:

    - "leading":  k·(T // N) + steps_offset, k = N−1 .. 0 (steps_offset is added to this spacing only, as diffusers);
    - "linspace": round(linspace(0, T − 1, N)), reversed;
    - "trailing": round(T − k·T/N) − 1, k = 0 .. N−1.

    EulerDiscreteScheduler's leading and trailing timesteps are these (as float32); its "linspace" keeps the
    unrounded values. guided-diffusion's uniform striding is `space_timesteps`. Raises ValueError when
    steps_offset pushes a leading timestep to T or beyond.
    """
    t = check_int("num_train_timesteps", num_train_timesteps, 1)
    n = check_int("num_inference_steps", num_inference_steps, 1, t)
    offset = check_int("steps_offset", steps_offset, 0)
    if spacing == "linspace":
        return np.linspace(0, t - 1, n).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        if (n - 1) * (t // n) + offset >= t:
            raise ValueError(f"steps_offset = {offset} puts the first of num_inference_steps = {n} 'leading' "
                             f"timesteps at {(n - 1) * (t // n) + offset}, outside [0, num_train_timesteps = {t})")
        return (np.arange(0, n) * (t // n)).round()[::-1].copy().astype(np.int64) + offset
    if spacing == "trailing":
        return np.round(np.arange(t, 0, -t / n)).astype(np.int64) - 1
    raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")


# --------------------------------------------------------------------------- σ schedules (k-diffusion)


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models") eq. 5:
    σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for i = 0 .. n−1, then σ_n = 0.

    Returns float64 [n + 1], descending from sigma_max to sigma_min, then 0: k-diffusion's get_sigmas_karras,
    diffusers' `_convert_to_karras` (use_karras_sigmas=True) with the 0 appended. 0 < sigma_min < sigma_max;
    rho > 0 (larger ρ puts more steps at low noise; the paper uses 7). n = 1 gives [sigma_max, 0].
    """
    n = check_int("n", n, 1)
    sigma_min, sigma_max = _check_sigma_range(sigma_min, sigma_max)
    rho = check_number("rho", rho, 0.0, low_open=True)
    ramp = np.linspace(0.0, 1.0, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """σ_i = exp(log σ_max + i/(n−1)·(log σ_min − log σ_max)), i = 0 .. n−1, then σ_n = 0: steps uniform in log σ,
    i.e. in the half log-SNR λ = −log σ (DPM-Solver's "logSNR" step spacing, Lu et al. 2022).

    Returns float64 [n + 1], descending, then 0: k-diffusion's get_sigmas_exponential, diffusers'
    `_convert_to_exponential` (use_exponential_sigmas=True) with the 0 appended. 0 < sigma_min < sigma_max.
    """
    n = check_int("n", n, 1)
    sigma_min, sigma_max = _check_sigma_range(sigma_min, sigma_max)
    return _append_zero(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n)))


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> np.ndarray:
    """log σ_i = log σ_min + r_i^ρ·(log σ_max − log σ_min), r_i = 1 − i/(n−1), i = 0 .. n−1, then σ_n = 0: a
    polynomial of degree ρ in log σ (k-diffusion's get_sigmas_polyexponential; ρ = 1 is the exponential schedule).

    Returns float64 [n + 1], descending, then 0. 0 < sigma_min < sigma_max; rho > 0.
    """
    n = check_int("n", n, 1)
    sigma_min, sigma_max = _check_sigma_range(sigma_min, sigma_max)
    rho = check_number("rho", rho, 0.0, low_open=True)
    ramp = np.linspace(1.0, 0.0, n) ** rho
    return _append_zero(np.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def get_sigmas_beta(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta: float = 0.6
                    ) -> np.ndarray:
    """Beta sampling (Zheng et al. 2024, "Beta Sampling is All You Need", arXiv 2407.12173):
    σ_i = σ_min + F⁻¹(1 − i/(n−1))·(σ_max − σ_min), i = 0 .. n−1, then σ_n = 0, with F⁻¹ the quantile function of
    Beta(alpha, beta); α = β = 0.6 < 1 concentrates steps at both ends of the schedule.

    Returns float64 [n + 1], descending, then 0: diffusers' `_convert_to_beta` (use_beta_sigmas=True) with the 0
    appended. 0 < sigma_min < sigma_max; alpha, beta > 0.
    """
    n = check_int("n", n, 1)
    sigma_min, sigma_max = _check_sigma_range(sigma_min, sigma_max)
    alpha = check_number("alpha", alpha, 0.0, low_open=True)
    beta = check_number("beta", beta, 0.0, low_open=True)
    from scipy.stats import beta as beta_distribution  # scipy is a dependency; imported here to keep import cheap

    ppf = beta_distribution.ppf(1 - np.linspace(0.0, 1.0, n), alpha, beta)
    return _append_zero(sigma_min + ppf * (sigma_max - sigma_min))


# ------------------------------------------------------------------------------------- discrete VP ↔ σ


def vp_sigmas(alphas_cumprod) -> np.ndarray:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t): the noise level of a discrete VP process seen as x_t/√ᾱ_t = x_0 + σ_t·ε (Karras et
    al. 2022 Table 1; k-diffusion's DiscreteEpsDDPMDenoiser, diffusers' EulerDiscreteScheduler.sigmas).

    alphas_cumprod: [T], each in (0, 1] (zero terminal SNR's ᾱ_{T−1} = 0 has σ = ∞: set it to a small positive
    value first, as diffusers' Euler schedulers do with 2⁻²⁴). Returns float64 [T], ascending where ᾱ descends.
    """
    ac = _check_in("alphas_cumprod", _float64_array("alphas_cumprod", alphas_cumprod, ndim=1, min_size=1),
                   0.0, 1.0, low_open=True)
    return np.sqrt((1 - ac) / ac)


def sigma_to_t(sigma, sigmas, quantize: bool = False) -> np.ndarray:
    """The fractional training timestep of noise level σ (k-diffusion's DiscreteSchedule.sigma_to_t, which
    diffusers' EulerDiscreteScheduler._sigma_to_t copies): t is interpolated linearly in log σ between the two
    neighbouring training levels, t = (1 − w)·i + w·(i + 1), w = (log σ_i − log σ)/(log σ_i − log σ_{i+1}) clipped to
    [0, 1], so σ below sigmas[0] gives 0 and above sigmas[−1] gives T − 1. quantize=True: the index of the nearest
    training level in log σ (ties to the lower index), int64.

    sigma: a number or array [...], each ≥ 0 (σ = 0 gives t = 0); sigmas: [T], T ≥ 2, the training levels, positive
    and strictly ascending (`vp_sigmas(alphas_cumprod)`). Returns float64 (int64 when quantize) of sigma's shape.
    """
    s = _check_in("sigma", _float64_array("sigma", sigma), 0.0, math.inf)
    table = _check_in("sigmas", _float64_array("sigmas", sigmas, ndim=1, min_size=2), 0.0, math.inf, low_open=True)
    if not np.all(np.diff(table) > 0):
        i = int(np.argmin(np.diff(table) > 0))
        raise ValueError(f"sigmas must be strictly ascending, got sigmas[{i}] = {table[i]} >= "
                         f"sigmas[{i + 1}] = {table[i + 1]}")
    if not isinstance(quantize, (bool, np.bool_)):
        raise TypeError(f"quantize must be a bool, got {quantize!r}")
    log_table = np.log(table)
    # log 0 = −inf in k-diffusion; any level below sigmas[0] gives the same t = 0 (and index 0), without a warning
    log_s = np.log(np.maximum(s, np.finfo(np.float64).tiny))
    if quantize:
        return np.abs(log_s[..., None] - log_table).argmin(axis=-1).astype(np.int64)
    # k-diffusion's low index (last level ≤ σ, by a cumsum/argmax) is a binary search on the ascending table
    low = np.clip(np.searchsorted(log_table, log_s, side="right") - 1, 0, table.size - 2)
    lo, hi = log_table[low], log_table[low + 1]
    w = np.clip((lo - log_s) / (lo - hi), 0.0, 1.0)
    return (1 - w) * low + w * (low + 1)


# --------------------------------------------------------------------------------------- flow matching


def flow_shift(sigmas, shift: float) -> np.ndarray:
    """SD3's timestep shift (Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution Image
    Synthesis", eq. 23): s' = shift·s / (1 + (shift − 1)·s). shift > 1 moves the steps toward high noise; 1 is the
    identity; s = 0 and s = 1 stay. diffusers' FlowMatchEulerDiscreteScheduler(shift=...).

    sigmas: a number or array [...], each in [0, 1]; shift > 0. Returns float64 of sigmas' shape.
    """
    s = _check_in("sigmas", _float64_array("sigmas", sigmas), 0.0, 1.0)
    shift = check_number("shift", shift, 0.0, low_open=True)
    return shift * s / (1 + (shift - 1) * s)


def flow_time_shift(mu: float, sigmas, sigma: float = 1.0) -> np.ndarray:
    """Resolution-dependent shift (Flux; diffusers' FlowMatchEulerDiscreteScheduler.time_shift, "exponential",
    used with use_dynamic_shifting=True and set_timesteps(mu=...)): s' = e^μ / (e^μ + (1/s − 1)^σ). With σ = 1 it
    is `flow_shift` with shift = e^μ; s = 0 and s = 1 stay.

    mu: finite; sigmas: a number or array [...], each in [0, 1]; sigma > 0. Returns float64 of sigmas' shape.
    """
    mu = check_number("mu", mu)
    s = _check_in("sigmas", _float64_array("sigmas", sigmas), 0.0, 1.0)
    sigma = check_number("sigma", sigma, 0.0, low_open=True)
    odds = np.divide(1.0 - s, s, out=np.full_like(s, np.inf), where=s > 0)  # 1/s − 1, ∞ at s = 0 (→ s' = 0)
    return math.exp(mu) / (math.exp(mu) + odds ** sigma)


def flow_mu(image_seq_len: float, base_seq_len: float = 256, max_seq_len: float = 4096, base_shift: float = 0.5,
            max_shift: float = 1.15) -> float:
    """μ for `flow_time_shift`, linear in the image's token count (Flux; diffusers' `calculate_shift`):
    μ = base_shift + (image_seq_len − base_seq_len)·(max_shift − base_shift)/(max_seq_len − base_seq_len), not
    clamped outside [base_seq_len, max_seq_len] (as diffusers).

    image_seq_len > 0 (latent tokens: (H/16)·(W/16) for Flux); base_seq_len < max_seq_len, both > 0.
    """
    image_seq_len = check_number("image_seq_len", image_seq_len, 0.0, low_open=True)
    base_seq_len = check_number("base_seq_len", base_seq_len, 0.0, low_open=True)
    max_seq_len = check_number("max_seq_len", max_seq_len, 0.0, low_open=True)
    base_shift = check_number("base_shift", base_shift)
    max_shift = check_number("max_shift", max_shift)
    if base_seq_len >= max_seq_len:
        raise ValueError(f"base_seq_len must be < max_seq_len, got base_seq_len = {base_seq_len}, "
                         f"max_seq_len = {max_seq_len}")
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)  # diffusers' order of operations, for equal floats
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def flow_sigmas(num_inference_steps: int, shift: float = 1.0, sigma_min: float | None = None, *,
                mu: float | None = None, num_train_timesteps: int = 1000) -> np.ndarray:
    """Flow-matching noise levels as diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps computes them:
    s = linspace(1, sigma_min, N), then shifted (`flow_shift` by `shift`, or `flow_time_shift(mu, s)` when mu is
    given: use_dynamic_shifting), then a terminal 0 appended. The model's timesteps are
    num_train_timesteps·sigmas[:-1].

    sigma_min=None is the scheduler's own: 1/num_train_timesteps, statically shifted when mu is None (diffusers
    shifts its training σ's once in __init__ and the inference ones again, so shift ≠ 1 shifts the last step
    twice); sigma_min=1/N with mu is the Flux pipeline's sigmas = linspace(1, 1/N, N). shift > 0; mu and shift ≠ 1
    exclude each other (diffusers ignores shift under dynamic shifting). Returns float64 [N + 1], descending, ending
    in 0.
    """
    n = check_int("num_inference_steps", num_inference_steps, 1)
    t = check_int("num_train_timesteps", num_train_timesteps, 1)
    shift = check_number("shift", shift, 0.0, low_open=True)
    if mu is not None:
        mu = check_number("mu", mu)
        if shift != 1.0:
            raise ValueError(f"pass shift (static shifting) or mu (dynamic shifting), not both: got shift = {shift}, "
                             f"mu = {mu}")
    if sigma_min is None:
        sigma_min = 1.0 / t if mu is not None else float(flow_shift(1.0 / t, shift))
    else:
        sigma_min = check_number("sigma_min", sigma_min, 0.0, 1.0)
    s = np.linspace(1.0, sigma_min, n)
    s = flow_time_shift(mu, s) if mu is not None else flow_shift(s, shift)
    return _append_zero(s)
