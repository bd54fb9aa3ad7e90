"""Every sampler as a coefficient table of the one fused step (docs/architecture.md, "Adding a sampler").

A sampler here is a float64 *table builder*: plain numpy that turns a noise schedule into rows of
`fastdiff.ops.sampler_step`'s table (columns in `fastdiff.ops.table`), one row per model evaluation. The
kernel then computes, per sample,

    D = clip(a_x·x + a_o·o),    x_next = c_x·x + c_D·D + Σ_k c_k·H_k + c_z·z

and writes D (or x) into a history slot. Each builder is the only place its sampler's math lives.

Schedules are given in the state space the sampler runs in (`Space`): x = α·x0 + σ·ε with
- "ve": α = 1, σ = sig (k-diffusion's convention: x̃ = x/α and σ̃ = σ/α; every k-diffusion sampler),
- "vp": sig = σ̃ = √((1 − ᾱ)/ᾱ), α = 1/√(1 + σ̃²), σ = α·σ̃ (diffusers' multistep schedulers, DDPM, DDIM),
- "flow": sig = s, α = 1 − s, σ = s (rectified flow: SD3, Flux).
The builders derive each update in the scale-free variables x̃ = x/α, σ̃ = σ/α, λ = −log σ̃ (where the
k-diffusion and DPM-Solver formulas are written) and rescale rows by α, so one builder serves all three spaces.
The model-output conversion a_x, a_o comes from the row's (α, σ) and the prediction type (`conversion`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
import torch

from fastdiff.ops import table as T
from fastdiff.ops.ddim_step import ddim_coefficients
from fastdiff.ops.sampler_step import ALPHA_FLOOR as _ALPHA_FLOOR, conversion

SPACES = ("ve", "vp", "flow")


@dataclasses.dataclass(frozen=True)
class StepTable:
    """A sampler's rows: coefs [R, STEP_NCOL] float64; sigmas [R] the schedule value (in the space's
    convention) at which row r evaluates the model; step [R] the sampler step each row belongs to (Heun-type
    samplers spend two rows per step); history: the number of history slots; stochastic: whether any row
    draws noise; var_mode: `fastdiff.ops.table.VAR_MODES` code."""
    coefs: np.ndarray
    sigmas: np.ndarray
    step: np.ndarray
    history: int
    stochastic: bool
    var_mode: int = 0
    timesteps: np.ndarray | None = None  # [R] model timesteps, for discrete-time (VP) tables

    def tensor(self, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The [R, STEP_NCOL] table on `device`, stored as `dtype` (float32, or float64 for float64 samples)."""
        return torch.as_tensor(self.coefs, dtype=dtype, device=device)

    def noisy_rows(self) -> np.ndarray:
        """Which rows add noise (host-side, so a loop knows where to draw it without reading the device)."""
        return self.coefs[:, T.C_Z] != 0

    def __len__(self) -> int:
        return self.coefs.shape[0]


# ----------------------------------------------------------------------------------------------- spaces


def alpha_sigma(space: str, sig) -> tuple[np.ndarray, np.ndarray]:
    """(α, σ) of x = α·x0 + σ·ε at schedule values `sig` in `space` (module docstring)."""
    sig = np.asarray(sig, dtype=np.float64)
    if space == "ve":
        return np.ones_like(sig), sig
    if space == "vp":
        alpha = 1.0 / np.sqrt(1.0 + sig * sig)
        return alpha, np.where(np.isinf(sig), 1.0, sig * alpha)
    if space == "flow":
        return 1.0 - sig, sig
    raise ValueError(f"space must be one of {SPACES}, got {space!r}")


def sig_from_tilde(space: str, sigma_tilde: float) -> float:
    """The schedule value whose σ/α is `sigma_tilde` (stage points of two-stage samplers)."""
    if space in ("ve", "vp"):
        return sigma_tilde
    return sigma_tilde / (1.0 + sigma_tilde)


def _lambda(alpha, sigma):
    """λ = log α − log σ = −log σ̃ (DPM-Solver's half-log-SNR), ±inf at the ends."""
    with np.errstate(divide="ignore"):
        return np.log(alpha) - np.log(sigma)


# ------------------------------------------------------------------------------------------------- rows


class _Rows:
    """Accumulates table rows in visiting order."""

    def __init__(self, space: str, history: int):
        self.space, self.history = space, history
        self.rows: list[np.ndarray] = []
        self.sigs: list[float] = []
        self.steps: list[int] = []
        self.skip: list[tuple[float, float]] = []  # LCM's (c_skip, c_out) boundary condition on D, else (0, 1)

    def add(self, step: int, sig: float, *, c_x=0.0, c_d=0.0, c_z=0.0, h: Sequence[float] = (), write_d=-1,
            write_x=-1, skip=(0.0, 1.0), c_o=0.0, c_ou=0.0) -> np.ndarray:
        row = np.zeros(T.STEP_NCOL)
        row[T.C_X], row[T.C_D], row[T.C_Z], row[T.C_O], row[T.C_OU] = c_x, c_d, c_z, c_o, c_ou
        for k, c in enumerate(h):
            row[T.C_H + k] = c
        row[T.WRITE_D], row[T.WRITE_X] = write_d, write_x
        self.rows.append(row)
        self.sigs.append(float(sig))
        self.steps.append(step)
        self.skip.append(skip)
        return row

    def table(self, prediction: str, clip: float = 0.0, cfg_scale=1.0, var_mode: int = 0,
              timesteps=None) -> StepTable:
        coefs = np.stack(self.rows)
        sigs = np.asarray(self.sigs)
        alpha, sigma = alpha_sigma(self.space, sigs)
        a_x, a_o = conversion(prediction, alpha, sigma)
        c_skip, c_out = np.asarray(self.skip).T
        coefs[:, T.A_X], coefs[:, T.A_O] = c_skip + c_out * a_x, c_out * a_o
        coefs[:, T.CLIP] = clip
        steps = np.asarray(self.steps)
        coefs[:, T.CFG_SCALE] = _per_step(cfg_scale, steps, "cfg_scale")
        if not np.isfinite(coefs[:, :T.WRITE_D]).all():
            bad = int(np.flatnonzero(~np.isfinite(coefs[:, :T.WRITE_D]).all(axis=1))[0])
            raise ValueError(f"the schedule gives a non-finite coefficient at row {bad} (sigma {sigs[bad]}); "
                             f"check that the sigmas are finite, positive and strictly decreasing")
        return StepTable(coefs, sigs, steps, self.history, bool((coefs[:, T.C_Z] != 0).any()), var_mode,
                         None if timesteps is None else np.asarray(timesteps))


def _per_step(value, steps: np.ndarray, name: str) -> np.ndarray:
    """A scalar, or one value per sampler step (e.g. a guidance interval or schedule), spread over the rows."""
    v = np.asarray(value, dtype=np.float64)
    if v.ndim == 0:
        return np.full(len(steps), float(v))
    if v.ndim != 1 or len(v) != steps.max() + 1:
        raise ValueError(f"{name} must be a number or one value per step ({steps.max() + 1}), got shape {v.shape}")
    return v[steps]


def _check_sigmas(sigmas) -> np.ndarray:
    s = np.asarray(sigmas, dtype=np.float64)
    if s.ndim != 1 or len(s) < 2:
        raise ValueError(f"sigmas must be a 1-D schedule with at least 2 values (n steps + the final one), got "
                         f"shape {s.shape}")
    if not (np.isfinite(s).all() and (s >= 0).all() and (np.diff(s) < 0).all()):
        raise ValueError(f"sigmas must be finite, >= 0 and strictly decreasing, got {s.tolist()}")
    return s


def _ancestral(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(σ_down, σ_up) splitting a step σ → σ_next into a deterministic part and fresh noise (k-diffusion's
    get_ancestral_step; η = 1 is the DDPM-like ancestral step)."""
    if not eta:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(max(sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2, 0.0)))
    return math.sqrt(sigma_next ** 2 - up ** 2), up


class _Point:
    """One schedule value with its α, σ, σ̃ = σ/α and λ = −log σ̃."""

    def __init__(self, space: str, sig: float):
        self.sig = float(sig)
        a, s = alpha_sigma(space, np.array([sig]))
        self.alpha, self.sigma = float(a[0]), float(s[0])
        self.tilde = self.sigma / self.alpha if self.alpha > 0 else math.inf
        self.lam = float(_lambda(a, s)[0])


def _points(space: str, sigmas) -> list[_Point]:
    return [_Point(space, s) for s in _check_sigmas(sigmas)]


def _first_order(p: _Point, q: _Point) -> tuple[float, float]:
    """(c_x, c_D) of the first-order step p → q: DDIM (Song et al. eq. 12, η = 0) = Euler in σ̃ = DPM-Solver-1
    (Lu et al. eq. 3.5 in data form): x_q = (σ_q/σ_p)·x_p − α_q·expm1(−h)·D, h = λ_q − λ_p."""
    if q.sigma == 0.0:
        return 0.0, q.alpha
    return q.sigma / p.sigma, -q.alpha * math.expm1(-(q.lam - p.lam))


# -------------------------------------------------------------------------------------------- samplers


def euler(sigmas, *, space: str = "ve", prediction: str = "x0", cfg_pp: bool = False, **common) -> StepTable:
    """Euler steps of the probability-flow ODE dx̃/dσ̃ = (x̃ − D)/σ̃ (Karras et al. 2022 Algorithm 2 without
    churn; flow matching's Euler x + (s_next − s)·v in "flow" space). cfg_pp: CFG++ (Chung et al. 2024 eq. 12):
    renoise along the *unconditional* ε̂_u, x_next = α_n·D_λ + σ_n·ε̂_u with D_λ guided at scale λ = cfg_scale
    (typically ≤ 1); ε̂_u = e_x·x + e_o·o_u from ε = (x − αD)/σ, so the row reads o_u through C_OU."""
    pts = _points(space, sigmas)
    rows = _Rows(space, 0)
    for i, (p, q) in enumerate(zip(pts, pts[1:])):
        c_x, c_d = _first_order(p, q)
        c_ou = 0.0
        if cfg_pp:
            a_x, a_o = (float(v[0]) for v in conversion(prediction, np.array([p.alpha]), np.array([p.sigma])))
            c_x, c_d = q.sigma * (1.0 - p.alpha * a_x) / p.sigma, q.alpha
            c_ou = -q.sigma * p.alpha * a_o / p.sigma
        rows.add(i, p.sig, c_x=c_x, c_d=c_d, c_ou=c_ou)
    return rows.table(prediction, **common)


def euler_ancestral(sigmas, *, eta: float = 1.0, s_noise: float = 1.0, space: str = "ve",
                    prediction: str = "x0", **common) -> StepTable:
    """Euler steps to σ̃_down plus fresh noise σ̃_up·z (k-diffusion's sample_euler_ancestral)."""
    pts = _points(space, sigmas)
    rows = _Rows(space, 0)
    for i, (p, q) in enumerate(zip(pts, pts[1:])):
        down, up = _ancestral(p.tilde, q.tilde, eta)
        r = down / p.tilde
        rows.add(i, p.sig, c_x=q.alpha / p.alpha * r, c_d=q.alpha * (1.0 - r),
                 c_z=q.alpha * up * s_noise if q.sigma > 0 else 0.0)
    return rows.table(prediction, **common)


def heun(sigmas, *, space: str = "ve", prediction: str = "x0", **common) -> StepTable:
    """Heun's second-order method (Karras et al. 2022 Algorithm 1, no churn): an Euler predictor to σ̃_next,
    then x̃_next = x̃ + ½(d + d₂)·Δσ̃; two model evaluations (two rows) per step, Euler on the last step to 0.
    The corrector row reads x̃_i and D_i back from history slots 1 and 0."""
    pts = _points(space, sigmas)
    rows = _Rows(space, 2)
    for i, (p, q) in enumerate(zip(pts, pts[1:])):
        c_x, c_d = _first_order(p, q)
        if q.sigma == 0.0:
            rows.add(i, p.sig, c_x=c_x, c_d=c_d)
            continue
        rows.add(i, p.sig, c_x=c_x, c_d=c_d, write_d=0, write_x=1)
        dt = q.tilde - p.tilde
        # x̃_next = x̃_i(1 + dt/2σ̃_i) − dt/2σ̃_i·D_i + dt/2σ̃_q·(x̃₂ − D₂), scaled by α_q (x̃ = x/α)
        rows.add(i, q.sig, c_x=dt / (2 * q.tilde), c_d=-q.alpha * dt / (2 * q.tilde),
                 h=(-q.alpha * dt / (2 * p.tilde), q.alpha / p.alpha * (1 + dt / (2 * p.tilde))))
    return rows.table(prediction, **common)


def dpmpp_2m(sigmas, *, lower_order_final: bool = False, space: str = "ve", prediction: str = "x0",
             **common) -> StepTable:
    """DPM-Solver++(2M) (Lu et al. 2022b Algorithm 2): x_next = (σ_n/σ)x − α_n·expm1(−h)·D_d with
    D_d = (1 + 1/2r)D − (1/2r)D_prev, r = h_prev/h; first order on the first step and the step to σ = 0, and
    with `lower_order_final` on the last step of fewer than 15 (diffusers' DPMSolverMultistepScheduler)."""
    return dpm_multistep(sigmas, order=2, lower_order_final=lower_order_final, space=space, prediction=prediction,
                         **common)


def dpmpp_2m_sde(sigmas, *, eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint",
                 lower_order_final: bool = False, space: str = "ve", prediction: str = "x0",
                 **common) -> StepTable:
    """DPM-Solver++(2M) SDE (Lu et al. 2022b §5, k-diffusion's sample_dpmpp_2m_sde): the data-prediction SDE
    step x_n = (σ_n/σ)e^{−ηh}x + α_n(1 − e^{−(1+η)h})D + 2nd-order term + σ_n√(1 − e^{−2ηh})·z; x_n = D at σ_n = 0;
    `lower_order_final`: first order on the last step of fewer than 15 (diffusers)."""
    return dpm_multistep(sigmas, order=2, solver_type=solver_type, eta=eta, s_noise=s_noise,
                         lower_order_final=lower_order_final, space=space, prediction=prediction, **common)


def dpm_multistep(sigmas, *, order: int = 2, solver_type: str = "midpoint", eta: float = 0.0, s_noise: float = 1.0,
                  lower_order_final: bool = False, euler_at_final: bool = False, start: int = 0,
                  space: str = "ve", prediction: str = "x0", **common) -> StepTable:
    """Multistep DPM-Solver++ (Lu et al. 2022b) of order 1–3 in data prediction, as diffusers'
    DPMSolverMultistepScheduler runs it: with h = λ_n − λ, h_η = (1 + η)h,

        x_n = (σ_n/σ)e^{−ηh}·x + α_n(1 − e^{−h_η})·D + α_n·k₂·D₁ − α_n·φ₃·D₂ + σ_n√(1 − e^{−2ηh})·z

    (η = 0: the ODE solver, η = 1: the SDE solver "sde-dpmsolver++"); order 2: D₁ = (D − D_prev)/r,
    k₂ = ½(1 − e^{−h_η}) ("midpoint") or φ₂ = 1 − (1 − e^{−h_η})/h_η ("heun"); order 3 (ODE): D₁, D₂ from the
    last three D's (Lu et al. eq. 3.15 via diffusers' r0, r1 form), k₂ = φ₂, φ₃ = φ₂/h − ½. The order of step i
    is min(order, i − start + 1) (start: the first step taken, diffusers' set_begin_index); the step to σ = 0 is
    x_n = α_n·D, and first order on the last step with `euler_at_final` or `lower_order_final` (fewer than 15
    steps), second order at most on the one before it with `lower_order_final`. History: the last order − 1 D's,
    rotated through order − 1 slots."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    if order == 3 and eta:
        raise ValueError("the third-order DPM-Solver++ step is the ODE solver (eta = 0)")
    pts = _points(space, sigmas)
    n = len(pts) - 1
    slots = max(order - 1, 1)
    rows = _Rows(space, slots)
    short = lower_order_final and n < 15
    for i, (p, q) in enumerate(zip(pts, pts[1:])):
        slot = i % slots
        prev1, prev2 = (i - 1) % slots, (i - 2) % slots
        if q.sigma == 0.0:
            rows.add(i, p.sig, c_d=q.alpha, write_d=slot)
            continue
        k = min(order, i + 1 - (start if i >= start else 0))
        if i == n - 1 and (euler_at_final or short):
            k = 1
        elif i == n - 2 and short:
            k = min(k, 2)
        h = q.lam - p.lam
        h_eta = (1.0 + eta) * h
        phi1 = -math.expm1(-h_eta)
        c_d, hist = q.alpha * phi1, [0.0] * slots
        if k == 2:
            r = (p.lam - pts[i - 1].lam) / h
            k2 = 0.5 * phi1 if solver_type == "midpoint" else 1.0 - phi1 / h_eta
            c_d += q.alpha * k2 / r
            hist[prev1] = -q.alpha * k2 / r
        elif k == 3:
            r0, r1 = (p.lam - pts[i - 1].lam) / h, (pts[i - 1].lam - pts[i - 2].lam) / h
            phi2 = 1.0 - phi1 / h
            a, b = _third_order(phi2, phi2 / h - 0.5, r0, r1)
            c_d += q.alpha * a / r0
            hist[prev1] = q.alpha * (-a / r0 + b / r1)
            hist[prev2] = -q.alpha * b / r1
        c_z = q.sigma * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise if eta else 0.0
        rows.add(i, p.sig, c_x=q.sigma / p.sigma * math.exp(-eta * h), c_d=c_d, c_z=c_z, h=hist, write_d=slot)
    return rows.table(prediction, **common)


def _third_order(phi2: float, phi3: float, r0: float, r1: float) -> tuple[float, float]:
    """The third-order multistep update φ₂·D₁ − φ₃·D₂ with D₁ = D1_0 + r0/(r0 + r1)·(D1_0 − D1_1),
    D₂ = (D1_0 − D1_1)/(r0 + r1), written as a·D1_0 + b·D1_1 where D1_0 = (D − D₋₁)/r0, D1_1 = (D₋₁ − D₋₂)/r1:
    returns (a, b)."""
    return (phi2 * (1 + r0 / (r0 + r1)) - phi3 / (r0 + r1),
            -phi2 * r0 / (r0 + r1) + phi3 / (r0 + r1))


def renoise(sigmas, *, s_noise: float = 1.0, space: str = "flow", prediction: str = "flow",
            **common) -> StepTable:
    """Denoise, then noise afresh to the next level: x_next = α_n·D + σ_n·s_noise·z (flow matching's stochastic
    sampling, diffusers' FlowMatchEulerDiscreteScheduler(stochastic_sampling=True); x_next = D at σ_n = 0)."""
    pts = _points(space, sigmas)
    rows = _Rows(space, 0)
    for i, (p, q) in enumerate(zip(pts, pts[1:])):
        rows.add(i, p.sig, c_d=q.alpha, c_z=q.sigma * s_noise)
    return rows.table(prediction, **common)


def dpmpp_3m_sde(sigmas, *, eta: float = 1.0, s_noise: float = 1.0, space: str = "ve", prediction: str = "x0",
                 **common) -> StepTable:
    """DPM-Solver++(3M) SDE (k-diffusion's sample_dpmpp_3m_sde): third-order multistep in λ with the last two
    D's (slots rotated every step), fresh noise σ_n√(1 − e^{−2ηh}); x_n = D at σ_n = 0."""
    pts = _points(space, sigmas)
    rows = _Rows(space, 2)
    for i, (p, q) in enumerate(zip(pts, pts[1:])):
        slot, prev1, prev2 = i % 2, (i - 1) % 2, (i - 2) % 2  # D_{i-2} sits in the slot D_i overwrites
        if q.sigma == 0.0:
            rows.add(i, p.sig, c_d=q.alpha, write_d=slot)
            continue
        h = q.lam - p.lam
        h_eta = h * (eta + 1)
        c = {"d": -math.expm1(-h_eta), prev1: 0.0, prev2: 0.0}
        phi2 = math.expm1(-h_eta) / h_eta + 1
        if i >= 2:
            r0, r1 = (p.lam - pts[i - 1].lam) / h, (pts[i - 1].lam - pts[i - 2].lam) / h
            phi3 = phi2 / h_eta - 0.5
            a, b = _third_order(phi2, phi3, r0, r1)
            c["d"] += a / r0
            c[prev1] = -a / r0 + b / r1
            c[prev2] = -b / r1
        elif i == 1:
            r = (p.lam - pts[0].lam) / h
            c["d"] += phi2 / r
            c[prev1] = -phi2 / r
        hist = [0.0, 0.0]
        for k in (prev1, prev2):
            hist[k] = q.alpha * c[k] if i >= 1 else 0.0
        c_z = q.sigma * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise if eta else 0.0
        rows.add(i, p.sig, c_x=q.alpha / p.alpha * math.exp(-h_eta) if p.alpha > 0 else 0.0,
                 c_d=q.alpha * c["d"], c_z=c_z, h=hist, write_d=slot)
    return rows.table(prediction, **common)


def dpmpp_2s_ancestral(sigmas, *, eta: float = 1.0, s_noise: float = 1.0, space: str = "ve",
                       prediction: str = "x0", **common) -> StepTable:
    """DPM-Solver++(2S) (Lu et al. 2022b Algorithm 1, r = ½) to σ̃_down, then fresh noise σ̃_up·z (k-diffusion's
    sample_dpmpp_2s_ancestral): a midpoint row and a final row per step; x_i waits in history slot 0."""
    pts = _points(space, sigmas)
    rows = _Rows(space, 1)
    for i, (p, q) in enumerate(zip(pts, pts[1:])):
        down, up = _ancestral(p.tilde, q.tilde, eta)
        c_z = q.alpha * up * s_noise if q.sigma > 0 else 0.0
        if down == 0.0:
            rows.add(i, p.sig, c_d=q.alpha, c_z=c_z)
            continue
        h = math.log(p.tilde) - math.log(down)
        mid = _Point(space, sig_from_tilde(space, math.exp(math.log(p.tilde) - h / 2)))
        rows.add(i, p.sig, c_x=mid.alpha / p.alpha * mid.tilde / p.tilde, c_d=-mid.alpha * math.expm1(-h / 2),
                 write_x=0)
        rows.add(i, mid.sig, c_d=-q.alpha * math.expm1(-h), c_z=c_z, h=(q.alpha / p.alpha * down / p.tilde,))
    return rows.table(prediction, **common)


def lcm(alphas_cumprod, timesteps, *, timestep_scaling: float = 10.0, sigma_data: float = 0.5,
        prediction: str = "epsilon", **common) -> StepTable:
    """Latent Consistency Model multistep sampling (Luo et al. 2023 Algorithm 1, diffusers' LCMScheduler):
    D = c_skip(t)·x + c_out(t)·x̂0 with the consistency boundary condition c_skip = σ_d²/(τ² + σ_d²),
    c_out = τ/√(τ² + σ_d²), τ = timestep_scaling·t; then x_prev = √ᾱ_prev·D + √(1 − ᾱ_prev)·z (D at the end)."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    ts = [int(t) for t in timesteps]
    rows = _Rows("vp", 0)
    for i, t in enumerate(ts):
        tau = timestep_scaling * t
        skip = (sigma_data ** 2 / (tau ** 2 + sigma_data ** 2), tau / math.sqrt(tau ** 2 + sigma_data ** 2))
        last = i == len(ts) - 1
        a_prev = 1.0 if last else ac[ts[i + 1]]
        rows.add(i, _vp_sig(ac[t]), c_d=math.sqrt(a_prev) if not last else 1.0,
                 c_z=0.0 if last else math.sqrt(1 - a_prev), skip=skip)
    return rows.table(prediction, timesteps=ts, **common)


def ddim(alphas_cumprod, timesteps, *, eta: float = 0.0, prediction: str = "epsilon",
         final_alpha_cumprod: float = 1.0, prev_timesteps=None, clipped_eps: bool = True,
         **common) -> StepTable:
    """DDIM (Song et al. eq. 12) over the descending `timesteps` of a process with ᾱ = alphas_cumprod:
    x_prev = √ᾱ_prev·x̂0 + √(1 − ᾱ_prev − σ²)·ε̂ + σz, σ = η√((1−ᾱ_prev)/(1−ᾱ))√(1 − ᾱ/ᾱ_prev), ε̂ from
    the (clipped) x̂0 as guided-diffusion does (`fastdiff.ops.ddim_step.ddim_coefficients`); the last step goes
    to ᾱ_prev = final_alpha_cumprod (diffusers' set_alpha_to_one=False: ᾱ_0). prev_timesteps (one per visit,
    descending order; < 0: final_alpha_cumprod) replaces each step's target timestep (default: the next visit;
    diffusers' DDIMScheduler: t − T//n). clipped_eps=False: the direction term uses the model's raw ε̂, not the
    one re-derived from the clipped x̂0 (diffusers' DDIMScheduler default, use_clipped_model_output=False)."""
    ac, ts, ac_prev = _visits(alphas_cumprod, timesteps, final_alpha_cumprod)
    if prev_timesteps is not None:
        prev = [int(p) for p in prev_timesteps]
        if len(prev) != len(ts) or max(prev) >= len(ac):
            raise ValueError(f"prev_timesteps must give one timestep below {len(ac)} per visit ({len(ts)}), "
                             f"got {prev}")
        ac_prev = np.array([ac[p] if p >= 0 else float(final_alpha_cumprod) for p in prev])
    a = ac[ts]
    c_x, c_d, sigma = ddim_coefficients(a, ac_prev, eta)
    rows = _Rows("vp", 0)
    for i in range(len(ts)):
        cx, cd, co = c_x[i], c_d[i], 0.0
        if not clipped_eps:  # ε̂ = e_x·x + e_o·o from the raw output: ε, v (ε = √ᾱ·v + √(1−ᾱ)·x) or x0
            e_x, e_o = {"epsilon": (0.0, 1.0), "v": (math.sqrt(1 - a[i]), math.sqrt(a[i])),
                        "x0": (1 / math.sqrt(1 - a[i]), -math.sqrt(a[i] / (1 - a[i])))}[prediction]
            direction = cx * math.sqrt(1 - a[i])  # √(1 − ᾱ_prev − σ²)
            cx, cd, co = direction * e_x, math.sqrt(ac_prev[i]), direction * e_o
        rows.add(i, _vp_sig(a[i]), c_x=cx, c_d=cd, c_o=co, c_z=sigma[i])  # σ = 0 into ᾱ_prev = 1
    return rows.table(prediction, timesteps=ts, **common)


def ddpm(alphas_cumprod, timesteps, *, var_type: str = "fixed_small", prediction: str = "epsilon",
         final_noise: bool = False, **common) -> StepTable:
    """Ancestral DDPM (Ho et al. eq. 7 / Algorithm 2) over the respaced `timesteps` (Improved DDPM §4):
    x_prev = coef1·x̂0 + coef2·x + σ_t z with the posterior of the respaced process; σ_t fixed (small: β̃_t,
    large: β_t) or learned (var_mode 1, 2: Improved DDPM eq. 15 between LOGVAR_LO = log β̃ and LOGVAR_HI = log β).
    final_noise: noise on the last step too when its timestep is > 0, as diffusers' DDPMScheduler adds it at every
    t > 0 (there β̃ = 0, floored at 1e-20; fixed_large: β)."""
    from fastdiff.ops.common import var_type_name
    from fastdiff.ops.table import betas_for_timesteps, schedule_coefficients

    var_type = var_type_name(var_type)
    ac, ts, _ = _visits(alphas_cumprod, timesteps)
    co = schedule_coefficients(betas_for_timesteps(ac, ts))  # ascending in the kept timesteps
    s = len(ts)
    rows = _Rows("vp", 0)
    var_mode = {"learned": 1, "learned_range": 2}.get(var_type, 0)
    fixed = co["fixed_large_log_variance"] if var_type == "fixed_large" else co["posterior_log_variance_clipped"]
    for i, t in enumerate(ts):
        k = s - 1 - i
        c_z = 0.0 if k == 0 else (1.0 if var_mode else math.exp(0.5 * fixed[k]))
        lo = co["posterior_log_variance_clipped"][k]
        if k == 0 and final_noise and t > 0:
            lo = math.log(max(co["posterior_variance"][0], 1e-20))
            c_z = 1.0 if var_mode else math.exp(0.5 * (co["log_betas"][0] if var_type == "fixed_large" else lo))
        a = co["alphas_cumprod"][k]
        row = rows.add(i, _vp_sig(a), c_x=co["posterior_mean_coef2"][k],
                       c_d=co["posterior_mean_coef1"][k], c_z=c_z)
        row[T.LOGVAR_HI], row[T.LOGVAR_LO] = co["log_betas"][k], lo
    return rows.table(prediction, var_mode=var_mode, timesteps=ts, **common)


def _vp_sig(ac: float) -> float:
    """σ̃ = √((1 − ᾱ)/ᾱ) of a VP timestep (finite at ᾱ = 0 through the α floor)."""
    return math.sqrt((1 - ac) / max(ac, _ALPHA_FLOOR ** 2))


def _visits(alphas_cumprod, timesteps, final_alpha_cumprod: float = 1.0):
    """(ᾱ [T] float64, the visited timesteps descending, ᾱ of each visit's predecessor (final_alpha_cumprod
    after the last))."""
    from fastdiff.errors import check_whole_numbers

    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    if ac.ndim != 1 or ac.size == 0 or not ((ac >= 0) & (ac <= 1)).all():
        raise ValueError(f"alphas_cumprod must be a non-empty 1-D array of values in [0, 1], got shape {ac.shape}")
    ts = sorted(set(check_whole_numbers("timesteps", timesteps)), reverse=True)
    if not ts or ts[-1] < 0 or ts[0] >= len(ac):
        raise ValueError(f"timesteps must be non-empty and lie in [0, {len(ac)}), got {list(timesteps)}")
    ac_prev = np.array([ac[t] for t in ts[1:]] + [float(final_alpha_cumprod)])
    return ac, ts, ac_prev


BUILDERS: dict[str, Callable[..., StepTable]] = {
    "euler": euler, "euler_ancestral": euler_ancestral, "heun": heun, "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde, "dpmpp_3m_sde": dpmpp_3m_sde, "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
}
