"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models", arXiv 2302.04867) as a table of the one fused step (docs/architecture.md, "Adding a sampler"): one row per model evaluation.

UniPC-p alternates a multistep predictor UniP-p and the corrector UniC-p (paper §3: UniC-p, UniP-p and their
order conditions), both in the data-prediction form of the exponential integrator in λ = log α − log σ, with
ĥ = −h = λ_s − λ_t. From the previous (corrected) sample x_s and the model outputs D_s, D_{s_1}, … (earlier
points s_k, r_k = (λ_{s_k} − λ_s)/h):

    x_t = (σ_t/σ_s)·x_s − α_t·expm1(ĥ)·D_s − α_t·B·Σ_k a_k·(D_{s_k} − D_s)/r_k

where the a_k solve the order conditions R·a = g/B: R[n, k] = r_k^n (Vandermonde), g_n = n!·ĥ·φ_{n+1}(ĥ) with
the exponential-integrator functions φ_{n+1}(z) = (e^z − Σ_{m≤n} z^m/m!)/z^{n+1}, and B = ĥ ("bh1", B1(h)) or
expm1(ĥ) ("bh2", B2(h)). UniP-p uses the p − 1 earlier points and the first p − 1 conditions (a = ½ for
p = 2); UniC-p also uses D_t, the model output at the predicted x_t (r = 1), and all p conditions (a = ½ for
p = 1). This is diffusers' `UniPCMultistepScheduler` with predict_x0=True (solver_p unset).

One launch per evaluation: the model is evaluated at the predicted x_t (this row's x). UniC and UniP from the
same x_s share their first-order part, so the corrected sample is x_t^c = x_t + Δ with Δ = (UniC − UniP)'s
higher-order terms, a combination of D's only (D_t is this row's own D). The next predictor is affine in x_t^c
and the D's, so "correct, then predict" is one affine row in the uncorrected x and the D's, composed here in
float64. History: slot j mod K holds D_j, K = the most earlier D's any row reads (≤ order ≤ 3).
"""
from __future__ import annotations

import math

import numpy as np

from fastdiff.ops import table as T
from fastdiff.samplers import tables

VARIANTS = ("bh1", "bh2")
MAX_ORDER = T.MAX_HISTORY  # UniC-p reads p earlier D's, each in a history slot of the step op


def _bh_terms(pts: list[tables._Point], i: int, order: int, variant: str,
              corrector: bool) -> dict[int, float]:
    """The higher-order terms of UniP-`order` (corrector=False) or UniC-`order` (True) from pts[i] to
    pts[i+1] (module docstring): {j: coefficient of D_j}, j ≤ i (j = i + 1: the corrector's D_t). The
    first-order part (σ_t/σ_s)·x_s − α_t·expm1(ĥ)·D_s is `tables._first_order`'s, not included."""
    n_prev = order - 1
    if not corrector and n_prev == 0:
        return {}
    s, t = pts[i], pts[i + 1]
    if t.sigma == 0.0:
        raise ValueError("a UniPC step of order > 1 to sigma = 0 has no finite coefficients (diffusers "
                         "returns inf there); use lower_order_final=True or a final sigma > 0")
    hh = -(t.lam - s.lam)                 # ĥ = −h: the data-prediction form's step
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    rks = np.array([(pts[i - k].lam - s.lam) / -hh for k in range(1, n_prev + 1)] + [1.0])
    g = np.empty(order)                   # g_n/B, n = 1..order; h_phi_k = ĥ·φ_{n+1}(ĥ)
    h_phi_k, fact = h_phi_1 / hh - 1.0, 1.0
    for n in range(1, order + 1):
        g[n - 1] = h_phi_k * fact / b_h
        fact *= n + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    vander = rks[None, :] ** np.arange(order)[:, None]   # R_p[n, k] = r_k^n
    if corrector:
        rhos = np.array([0.5]) if order == 1 else np.linalg.solve(vander, g)
    else:
        rhos = np.array([0.5]) if order == 2 else np.linalg.solve(vander[:-1, :-1], g[:-1])
    scale = -t.alpha * b_h
    terms: dict[int, float] = {}
    for k in range(1, len(rhos) + 1):     # ρ_k·(D_{s_k} − D_s)/r_k; UniC's last term: ρ·(D_t − D_s)/1
        j = i - k if k <= n_prev else i + 1
        c = scale * rhos[k - 1] / rks[k - 1]
        terms[j] = terms.get(j, 0.0) + c
        terms[i] = terms.get(i, 0.0) - c
    return terms


def _orders(n: int, order: int, lower_order_final: bool, start: int = 0) -> list[int]:
    """UniP's order per step: warm-up min(order, i − start + 1) from the first step taken, `start`, and
    min(order, n − i) near the end with lower_order_final (diffusers' `this_order`)."""
    return [min(order, i + 1 - (start if i >= start else 0), n - i if lower_order_final else order)
            for i in range(n)]


def unipc(sigmas, *, order: int = 2, variant: str = "bh2", corrector: bool = True, disable_corrector=(),
          lower_order_final: bool = True, start: int = 0, space: str = "vp", prediction: str = "x0",
          **common) -> tables.StepTable:
    """UniPC-`order` with B(h) = `variant` (module docstring; Zhao et al. 2023) over `sigmas` (n steps
    plus the final value, in `space`), one row per model evaluation: row i evaluates the model at the
    predicted x_i, applies UniC-p to it (p: the order of the predictor that produced x_i) unless
    corrector=False or i − 1 ∈ disable_corrector (diffusers' semantics: the corrector after predictor step
    i − 1 is skipped), and predicts x_{i+1} with UniP. No corrector after the last predictor (as in
    diffusers). lower_order_final: the last steps use order n − i (so the step to σ = 0 is first order,
    x = D); without it a final σ = 0 is refused for order > 1 (no finite step, diffusers returns inf).
    start: the first step taken (diffusers' set_begin_index: img2img), where the warm-up begins and no
    corrector applies.

    common: clip, cfg_scale (and timesteps) as `tables._Rows.table` takes them."""
    if order not in range(1, MAX_ORDER + 1):
        raise ValueError(f"order must be 1, 2 or 3 (the step op keeps at most {MAX_ORDER} earlier D's), "
                         f"got {order!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    pts = tables._points(space, sigmas)
    n = len(pts) - 1
    orders = _orders(n, order, lower_order_final, start)
    disabled = {int(k) for k in disable_corrector}
    plans = []
    for i in range(n):
        c_x, c_d = tables._first_order(pts[i], pts[i + 1])
        pred = _bh_terms(pts, i, orders[i], variant, False)
        combo = {i: c_d}
        for j, c in pred.items():
            combo[j] = combo.get(j, 0.0) + c
        if corrector and i > start and (i - 1) not in disabled and c_x != 0.0:  # (c_x = 0: x_{i+1} = D_i)
            # x_i^c = x_i + Δ_i, Δ_i = UniC-p − UniP-p from x_{i−1}^c (p = orders[i − 1]);
            # x_{i+1} = c_x·x_i^c + … = c_x·x_i + c_x·Δ_i + …
            p = orders[i - 1]
            unic = _bh_terms(pts, i - 1, p, variant, True)
            unip = _bh_terms(pts, i - 1, p, variant, False)
            for j in unic.keys() | unip.keys():
                combo[j] = combo.get(j, 0.0) + c_x * (unic.get(j, 0.0) - unip.get(j, 0.0))
        plans.append((c_x, combo))
    slots = max([i - min(combo) for i, (_, combo) in enumerate(plans)] + [0])
    rows = tables._Rows(space, slots)
    for i, (c_x, combo) in enumerate(plans):
        hist = [0.0] * slots
        for j, c in combo.items():
            if j < i:
                hist[j % slots] += c
        rows.add(i, pts[i].sig, c_x=c_x, c_d=combo[i], h=hist, write_d=i % slots if slots else -1)
    return rows.table(prediction, **common)
