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

// ----------------------------------------------------------------------------------------- DDPM eqs. 4, 7
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

namespace fastdiff {

// ------------------------------------------------------------------------------- the one sampler step (docs/architecture.md, "Adding a sampler")
// fastdiff.ops.sampler_step.reference, per element, in its operation order (x = the step's input, o = the model
// output, H_k = history slot k, v = the learned variance channel, z = noise):
//   o      = guided(o_c, o_u, w)                                    only with an unconditional output
//   D      = step_denoised(c, x, o)           = clip(a_x·x + a_o·o)
//   r      = step_affine(c, x, D)             = c_x·x + c_D·D
//   r      = step_add_term(r, c_o, o)         when c_o != 0 (o: the guided output, unclipped, not D)
//   r      = step_add_term(r, c_ou, o_u)      when c_ou != 0, only with an unconditional output
//   r      = step_add_term(r, c_k, H_k)       for each slot k < K whose c_k != 0, in slot order
//   r      = step_add_noise(r, step_noise_coef(c, var_mode, v), z)  when there is a noise source
// The kernels skip a whole term where its row coefficient makes it vanish (step_reads_noise, c_o / c_ou / c_k == 0),
// which the reference's torch.where(c != 0, c·t, 0) makes exact: such a slot or noise tensor is never read, and an
// inf / NaN value there stays out of the sum.
template <typename A>
struct StepCoefs {
  A cfg_scale, a_x, a_o;
  A clip_lo, clip_hi;  // [−CLIP, CLIP] when CLIP > 0, else [−inf, inf] (the identity, NaN included)
  A c_x, c_d, c_z;
  A c_o, c_ou;               // the raw outputs' terms (c_ou is ignored without an unconditional output)
  A c_h[step::MAX_HISTORY];  // 0 for slots >= K: not read
  A logvar_hi, logvar_lo;
  int write_d, write_x;  // history slot that receives D / x, or -1 (none, or a slot >= K)
};

// The history slot a WRITE_D / WRITE_X entry names: the float truncated toward zero as torch's .to(int64) does
// (-0.5 names slot 0), or -1 when that is not a slot in [0, K) (the reference compares with k < K only). The range
// test comes first, so NaN (a poisoned row) writes nothing and no out-of-range float is ever converted (undefined
// behaviour in C++); with K = 0 there is no slot at all.
template <typename R>
FASTDIFF_HD int step_slot(R v, int k_slots) {
  return k_slots > 0 && v > R(-1) && v < static_cast<R>(k_slots) ? static_cast<int>(v) : -1;
}

// Row `row` of the [S, STEP_NCOL] table (element type R) cast to the accumulation type A, for K history slots.
template <typename A, typename R>
FASTDIFF_HD StepCoefs<A> step_coefs(const R* row, int k_slots) {
  StepCoefs<A> c;
  c.cfg_scale = static_cast<A>(row[step::CFG_SCALE]);
  c.a_x = static_cast<A>(row[step::A_X]);
  c.a_o = static_cast<A>(row[step::A_O]);
  const A clip = static_cast<A>(row[step::CLIP]);
  c.clip_lo = clip > A(0) ? -clip : -static_cast<A>(INFINITY);
  c.clip_hi = clip > A(0) ? clip : static_cast<A>(INFINITY);
  c.c_x = static_cast<A>(row[step::C_X]);
  c.c_d = static_cast<A>(row[step::C_D]);
  c.c_z = static_cast<A>(row[step::C_Z]);
  c.c_o = static_cast<A>(row[step::C_O]);
  c.c_ou = static_cast<A>(row[step::C_OU]);
  for (int k = 0; k < step::MAX_HISTORY; ++k) c.c_h[k] = k < k_slots ? static_cast<A>(row[step::C_H + k]) : A(0);
  c.logvar_hi = static_cast<A>(row[step::LOGVAR_HI]);
  c.logvar_lo = static_cast<A>(row[step::LOGVAR_LO]);
  c.write_d = step_slot(row[step::WRITE_D], k_slots);
  c.write_x = step_slot(row[step::WRITE_X], k_slots);
  return c;
}

// Whether this row's step has a noise term to read: with var_mode 0 its scale is c_z for every element, and a zero
// scale adds exactly nothing; a learned σ_var is per element (c_z·exp(½ log σ²) is NaN for an infinite σ²).
template <typename A>
FASTDIFF_HD bool step_reads_noise(const StepCoefs<A>& c, int var_mode) {
  return var_mode != step::VAR_MODE_TABLE || c.c_z != A(0);
}

// D = clip(a_x·x + a_o·o): the denoised estimate from ε / x0 / v / flow velocity.
template <typename A>
FASTDIFF_HD A step_denoised(const StepCoefs<A>& c, A x, A o) {
  return clamp(c.a_x * x + c.a_o * o, c.clip_lo, c.clip_hi);
}

// c_x·x + c_D·D: x_next before its history and noise terms.
template <typename A>
FASTDIFF_HD A step_affine(const StepCoefs<A>& c, A x, A d) { return c.c_x * x + c.c_d * d; }

// r + c·v: a raw output (c_o·o, c_ou·o_u) or a history slot (c_k·H_k); called only where c != 0 (the others are
// never read).
template <typename A>
FASTDIFF_HD A step_add_term(A r, A c, A v) { return r + c * v; }

// log σ² of a learned variance: v itself (var_mode 1), or Improved DDPM eq. 15 (var_mode 2): frac·log β_t +
// (1 − frac)·log β̃_t with frac = (v + 1)/2.
template <typename A>
FASTDIFF_HD A step_log_variance(const StepCoefs<A>& c, int var_mode, A v) {
  if (var_mode == step::VAR_MODE_LEARNED) return v;
  const A frac = (v + A(1)) / A(2);
  return frac * c.logvar_hi + (A(1) - frac) * c.logvar_lo;
}

// The noise scale c_z·σ_var of one element (v unused with var_mode 0).
template <typename A>
FASTDIFF_HD A step_noise_coef(const StepCoefs<A>& c, int var_mode, A v) {
  return var_mode == step::VAR_MODE_TABLE ? c.c_z : c.c_z * fd_exp(A(0.5) * step_log_variance(c, var_mode, v));
}

// r + c·z where c != 0, else r: a zero scale never turns an infinite or NaN z into NaN (the reference's where).
template <typename A>
FASTDIFF_HD A step_add_noise(A r, A c, A z) { return r + (c != A(0) ? c * z : A(0)); }

}  // namespace fastdiff
