// adaLN "modulate" math shared by the CPU (g++) and CUDA (nvcc) kernels of `adaln_modulate` (DiT, Peebles & Xie
// 2023, §3.2 adaLN-Zero; diffusers' AdaLayerNormZero / AdaLayerNormContinuous, SD3 and Flux blocks):
//   h   = residual + gate·x                          (only when gated; h = x otherwise)
//   n   = (h − mean)·rstd                            (layer: biased variance over D; rms: mean = 0, E[h²])
//   out = (n·w + b)·(1 + scale) + shift              (w, b, scale, shift: 1, 0, 0, 0 when absent)
// No torch headers. A is the accumulation type: float for fp16/bf16/fp32 storage, double for fp64.
#pragma once

#include "fastdiff/macros.h"

namespace fastdiff {
namespace ln {

// rstd = 1/√(q/count + eps) from q = Σ(h − mean)² (layer) or Σh² (rms); count = D, the row length.
template <typename A>
FASTDIFF_HD A rstd(A q, A count, A eps) {
  const A var = count > A(0) ? q / count : A(0);
  return A(1) / fd_sqrt((var > A(0) ? var : A(0)) + eps);
}

// The gated residual of DiT / SD3 / Flux blocks, h = residual + gate·x.
template <typename A>
FASTDIFF_HD A gated(A residual, A gate, A x) { return residual + gate * x; }

// out for one element: the normalised value, the affine map of the norm layer, then the adaLN modulation. The
// flags drop the terms of absent arguments (·1, +0: the same value), so a kernel need not read constant rows.
template <bool W, bool B, bool S, bool SH, typename A>
FASTDIFF_HD A modulate_with(A h, A mean, A rstd, A w, A b, A scale, A shift) {
  A n = (h - mean) * rstd;
  if constexpr (W) n = n * w;
  if constexpr (B) n = n + b;
  if constexpr (S) n = n * (A(1) + scale);
  if constexpr (SH) n = n + shift;
  return n;
}

template <typename A>
FASTDIFF_HD A modulate(A h, A mean, A rstd, A w, A b, A scale, A shift) {
  return modulate_with<true, true, true, true>(h, mean, rstd, w, b, scale, shift);
}

// Backward, per element of a row, with g = ∂L/∂out and n = (h − mean)·rstd, y = n·w + b:
//   ∂scale = g·y, ∂shift = g, ∂w = dy·n, ∂b = dy with dy = g·(1 + scale); dn = dy·w.
// Summed over the row: s1 = Σ dn, s2 = Σ dn·n; then (layer) dh = rstd·(dn − s1/D − n·s2/D),
// (rms) dh = rstd·(dn − n·s2/D); gated: ∂residual = dh, ∂x = dh·gate, ∂gate = dh·x.
template <typename A>
struct ElemGrads {
  A n, y, dy, dn;
};

template <typename A>
FASTDIFF_HD ElemGrads<A> elem_grads(A g, A h, A mean, A rstd, A w, A b, A scale) {
  const A n = (h - mean) * rstd;
  const A dy = g * (A(1) + scale);
  return {n, n * w + b, dy, dy * w};
}

// dh = rstd·(dn − m1 − n·m2) with m1 = s1/D (0 for rms) and m2 = s2/D.
template <typename A>
FASTDIFF_HD A dh(A dn, A n, A rstd, A m1, A m2) { return rstd * (dn - m1 - n * m2); }

}  // namespace ln
}  // namespace fastdiff
