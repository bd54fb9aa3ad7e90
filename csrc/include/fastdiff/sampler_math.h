// Per-sample coefficients and per-element formulas of the fused sampler ops, written once and called by the
// CPU (csrc/cpu) and CUDA (csrc/cuda) kernels. They follow the `reference` functions in fastdiff/ops/*.py
// operation for operation. A is the accumulation type (float, or double for fp64 storage); R is the
// coefficient table's element type (float or double), cast to A before use as the reference does.
#pragma once

#include "fastdiff/coefs.h"
#include "fastdiff/macros.h"

namespace fastdiff {

// torch.clamp(v, lo, hi): NaN stays NaN. Branch-free selects, so CPU loops vectorise (a data-dependent branch
// here cost ~9 ns/element from mispredictions).
template <typename A>
FASTDIFF_HD A clamp(A v, A lo, A hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// Classifier-free guidance ε = ε_u + s·(ε_c − ε_u) (Ho & Salimans eq. 6 with s = 1 + w).
template <typename A>
FASTDIFF_HD A guided(A cond, A uncond, A scale) { return uncond + scale * (cond - uncond); }

// x̂0 from the model output: x̂0 = a·x_t − b·out with (a, b) = (1/√ᾱ, √(1/ᾱ − 1)) for ε (DDPM eq. 15 inverted)
// or (√ᾱ, √(1 − ᾱ)) for v (Salimans & Ho), x̂0 = out for x0-prediction; clipped to [lo, hi] = [-1, 1] when
// clip_denoised, else to [-inf, inf] (the identity, NaN included), so there is no per-element branch on it.
template <typename A>
struct X0Coefs {
  A a, b, lo, hi;
  bool direct;  // x0-prediction
};

template <typename A, typename R>
FASTDIFF_HD X0Coefs<A> x0_coefs(const R* row, int prediction, bool clip) {
  X0Coefs<A> c;
  const bool v = prediction == PRED_V;
  c.a = static_cast<A>(row[v ? coef::SQRT_AC : coef::SQRT_RECIP_AC]);
  c.b = static_cast<A>(row[v ? coef::SQRT_1M_AC : coef::SQRT_RECIPM1_AC]);
  c.direct = prediction == PRED_X0;
  c.lo = clip ? A(-1) : -static_cast<A>(INFINITY);
  c.hi = clip ? A(1) : static_cast<A>(INFINITY);
  return c;
}

template <typename A>
FASTDIFF_HD A predict_x0(const X0Coefs<A>& c, A x, A out) {
  return clamp(c.direct ? out : c.a * x - c.b * out, c.lo, c.hi);
}

// ---------------------------------------------------------------------------------------------- DDIM eq. 12
// x_{t-1} = √ᾱ_prev x̂0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z,  σ = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev),
// ε̂ = (x_t/√ᾱ_t − x̂0)/√(1/ᾱ_t − 1) re-derived from the (clipped) x̂0, as guided-diffusion's ddim_sample.
template <typename A>
struct DdimCoefs {
  X0Coefs<A> x0;
  A sqrt_recip_ac, sqrt_recipm1_ac, sqrt_ac_prev, dir;
  A noise_scale;  // [t > 0]·σ
};

template <typename A, typename R>
FASTDIFF_HD DdimCoefs<A> ddim_coefs(const R* row, bool t_nonzero, A eta, int prediction, bool clip) {
  DdimCoefs<A> c;
  c.x0 = x0_coefs<A>(row, prediction, clip);
  const A ac = static_cast<A>(row[coef::AC]), ac_prev = static_cast<A>(row[coef::AC_PREV]);
  c.sqrt_recip_ac = static_cast<A>(row[coef::SQRT_RECIP_AC]);
  c.sqrt_recipm1_ac = static_cast<A>(row[coef::SQRT_RECIPM1_AC]);
  const A sigma = eta * fd_sqrt((A(1) - ac_prev) / (A(1) - ac)) * fd_sqrt(A(1) - ac / ac_prev);
  const A d2 = A(1) - ac_prev - sigma * sigma;
  c.dir = fd_sqrt(d2 < A(0) ? A(0) : d2);  // clamp_min(0), NaN kept
  c.sqrt_ac_prev = fd_sqrt(ac_prev);
  c.noise_scale = (t_nonzero ? A(1) : A(0)) * sigma;
  return c;
}

// DDIM eq. 12 without the noise term, given x̂0 (add noise_scale·z afterwards).
template <typename A>
FASTDIFF_HD A ddim_mean(const DdimCoefs<A>& c, A x, A x0) {
  const A eps = (c.sqrt_recip_ac * x - x0) / c.sqrt_recipm1_ac;
  return x0 * c.sqrt_ac_prev + c.dir * eps;
}

// ---------------------------------------------------------------------------------- DDPM eq. 7 / Algorithm 2
// x_{t-1} = μ̃_t(x_t, x̂0) + [t > 0] exp(½ log σ²_t) z, μ̃_t = coef1 x̂0 + coef2 x_t; log σ²_t fixed (small:
// log β̃_t, large: log β_t), learned (= v), or learned_range (Improved DDPM eq. 15:
// frac·log β_t + (1 − frac)·log β̃_t with frac = (v + 1)/2).
template <typename A>
struct DdpmCoefs {
  X0Coefs<A> x0;
  A coef1, coef2, log_beta, post_logvar, nonzero;
  A fixed_std;  // [t > 0]·exp(½ log σ²_t) for the fixed variance types
  int var_type;
};

template <typename A, typename R>
FASTDIFF_HD DdpmCoefs<A> ddpm_coefs(const R* row, bool t_nonzero, int prediction, int var_type, bool clip) {
  DdpmCoefs<A> c;
  c.x0 = x0_coefs<A>(row, prediction, clip);
  c.coef1 = static_cast<A>(row[coef::POST_COEF1]);
  c.coef2 = static_cast<A>(row[coef::POST_COEF2]);
  c.log_beta = static_cast<A>(row[coef::LOG_BETA]);
  c.post_logvar = static_cast<A>(row[coef::POST_LOGVAR]);
  c.nonzero = t_nonzero ? A(1) : A(0);
  c.var_type = var_type;
  const A fixed = var_type == VAR_FIXED_LARGE ? static_cast<A>(row[coef::FIXED_LARGE_LOGVAR]) : c.post_logvar;
  c.fixed_std = c.nonzero * fd_exp(A(0.5) * fixed);
  return c;
}

template <typename A>
FASTDIFF_HD A ddpm_mean(const DdpmCoefs<A>& c, A x, A x0) { return c.coef1 * x0 + c.coef2 * x; }

// [t > 0]·σ_t for a learned variance channel value v (var_type learned / learned_range).
template <typename A>
FASTDIFF_HD A ddpm_learned_std(const DdpmCoefs<A>& c, A v) {
  A log_var = v;
  if (c.var_type == VAR_LEARNED_RANGE) {
    const A frac = (v + A(1)) / A(2);
    log_var = frac * c.log_beta + (A(1) - frac) * c.post_logvar;
  }
  return c.nonzero * fd_exp(A(0.5) * log_var);
}

// ------------------------------------------------------------------------------------ DDPM eqs. 4, 6, 7
// q(x_t | x_0): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM eq. 4); posterior mean μ̃_t = coef1 x_0 + coef2 x_t (eq. 7).
template <typename A>
struct Affine2 {
  A a, b;
};

template <typename A, typename R>
FASTDIFF_HD Affine2<A> q_sample_coefs(const R* row) {
  return {static_cast<A>(row[coef::SQRT_AC]), static_cast<A>(row[coef::SQRT_1M_AC])};
}

template <typename A, typename R>
FASTDIFF_HD Affine2<A> posterior_coefs(const R* row) {
  return {static_cast<A>(row[coef::POST_COEF1]), static_cast<A>(row[coef::POST_COEF2])};
}

template <typename A>
FASTDIFF_HD A affine2(const Affine2<A>& c, A u, A v) { return c.a * u + c.b * v; }

}  // namespace fastdiff
