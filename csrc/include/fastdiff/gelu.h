// GELU (Hendrycks & Gimpel 2016) and GEGLU (Shazeer 2020, "GLU Variants Improve Transformer", eq. 5) math shared
// by the CPU (g++) and CUDA (nvcc) kernels of `geglu` (csrc/cpu/geglu.cpp, csrc/cuda/geglu.cu):
//   GEGLU(h, g) = h · GELU(g)   (h: the first half of the projection, g: the gate, diffusers' `GEGLU`),
//   GELU(x)      = x·Φ(x) = ½x(1 + erf(x/√2))                      (approximate="none")
//   GELU_tanh(x) = ½x(1 + tanh(u)) = x·σ(2u),  u = √(2/π)(x + 0.044715x³)   (approximate="tanh")
//   GELU'(x)     = Φ(x) + x·φ(x),  φ(x) = e^(−x²/2)/√(2π)
//   GELU_tanh'(x) = s + 2x·s(1 − s)·√(2/π)(1 + 3·0.044715x²),  s = σ(2u)  (x clamped to ±20 in the second term)
// The tanh form is evaluated as the logistic σ(2u) = 1/(1 + e^(−2u)) (½(1 + tanh u) = σ(2u) exactly), with
// 1 − s = e^(−2u)·s, so neither GELU_tanh nor its derivative cancels.
// In float, erf and exp are branch-free polynomial approximations (below) so the CPU loops vectorise; in double
// (the checking path) the C library's. No torch headers. A is the accumulation type: float for fp16/bf16/fp32
// storage, double for fp64.
#pragma once

#include <string.h>

#include "fastdiff/expf.h"
#include "fastdiff/macros.h"

// The CPU loops vectorise only with every call below inlined into them (g++ gives up on the erf backward, which
// calls erf_fast and exp_fast, otherwise).
#if defined(__CUDACC__)
#define FASTDIFF_GELU_HD FASTDIFF_HD
#elif defined(__GNUC__) || defined(__clang__)
#define FASTDIFF_GELU_HD inline __attribute__((always_inline))
#else
#define FASTDIFF_GELU_HD inline
#endif

namespace fastdiff {
namespace gelu {

// e^v in float on v clamped to [-87, 88] (fastdiff/expf.h).
FASTDIFF_GELU_HD float exp_fast(float v) {
  v = v < -87.0f ? -87.0f : v;
  v = v > 88.0f ? 88.0f : v;
  return expf_poly(v);
}
// In double, clamped so e^v stays finite (the tanh form multiplies e^v by σ, which must not be inf · 0).
FASTDIFF_GELU_HD double exp_fast(double v) { return exp(v < 708.0 ? v : 708.0); }

// erf in float, branch-free, at most 1.4 ulp without FMA contraction over all floats (measured against scipy's
// erf in fp64 on 2.1M points in [-6, 6] and 100K log-spaced in [1e-30, 6.3]; torch's vectorised erf: 0.71 ulp):
//   |t| <= 0.921875:  erf(t) = t + t·P(t²),  P of degree 5 fitted to erf(t)/t − 1;
//   |t| >  0.921875:  erf(t) = ±(1 − e^Q(|t|)), Q of degree 8 fitted to log erfc(t) on [0.921875, 3.925]
//                     (erf rounds to ±1 in float beyond, where |t| is clamped).
// Both are computed and one is selected, so the loop has no branch. Coefficients: minimax-weighted least squares
// (Lawson's iteration) in double, rounded to float.
FASTDIFF_GELU_HD float erf_fast(float t) {
  const float a = fabsf(t);
  const float s = a * a;
  float p = -6.0132728e-4f;
  p = p * s + 4.9979626e-3f;
  p = p * s + -2.6770191e-2f;
  p = p * s + 1.1281925e-1f;
  p = p * s + -3.7612507e-1f;
  p = p * s + 1.2837915e-1f;
  const float small = a + a * p;
  const float c = a < 3.925f ? a : 3.925f;
  float q = 1.6307033e-6f;
  q = q * c + -4.5894598e-5f;
  q = q * c + 5.9511967e-4f;
  q = q * c + -4.7502345e-3f;
  q = q * c + 2.6390336e-2f;
  q = q * c + -1.1001842e-1f;
  q = q * c + -6.3189954e-1f;
  q = q * c + -1.1301857e+0f;
  q = q * c + 3.0723156e-4f;
  const float large = 1.0f - exp_fast(q);
  // Selected by bits, not by `?:`: g++ would sink each side's arithmetic into a branch and not vectorise.
  int32_t si, li;
  memcpy(&si, &small, sizeof si);
  memcpy(&li, &large, sizeof li);
  const int32_t use_small = -static_cast<int32_t>(a <= 0.921875f);
  const int32_t ri = (si & use_small) | (li & ~use_small);
  float r;
  memcpy(&r, &ri, sizeof r);
  return copysignf(r, t);
}
FASTDIFF_GELU_HD double erf_fast(double t) { return erf(t); }

template <typename A>
struct Consts {
  static constexpr A kSqrt1_2 = A(0.70710678118654752440);     // 1/√2
  static constexpr A kInvSqrt2Pi = A(0.39894228040143267794);  // 1/√(2π)
  static constexpr A kSqrt2_Pi = A(0.79788456080286535588);    // √(2/π)
  static constexpr A kKappa = A(0.044715);
};

// GELU(x), exact (erf) or tanh form.
template <typename A, bool TANH>
FASTDIFF_GELU_HD A gelu(A x) {
  using K = Consts<A>;
  if constexpr (TANH) {
    const A u = K::kSqrt2_Pi * (x + K::kKappa * x * x * x);
    return x / (A(1) + exp_fast(A(-2) * u));
  } else {
    return A(0.5) * x * (A(1) + erf_fast(x * K::kSqrt1_2));
  }
}

// GELU'(x), exact (erf) or tanh form.
template <typename A, bool TANH>
FASTDIFF_GELU_HD A gelu_grad(A x) {
  using K = Consts<A>;
  if constexpr (TANH) {
    const A u = K::kSqrt2_Pi * (x + K::kKappa * x * x * x);
    const A e = exp_fast(A(-2) * u);
    const A s = A(1) / (A(1) + e);
    // The second term with x clamped to ±20, where s(1 − s) < e^-600 has long made it 0 (and x³ would overflow).
    const A xc = x < A(-20) ? A(-20) : (x > A(20) ? A(20) : x);
    return s + A(2) * xc * s * (e * s) * K::kSqrt2_Pi * (A(1) + A(3) * K::kKappa * xc * xc);
  } else {
    const A cdf = A(0.5) * (A(1) + erf_fast(x * K::kSqrt1_2));
    return cdf + x * K::kInvSqrt2Pi * exp_fast(A(-0.5) * x * x);
  }
}

// One GEGLU output from the value h and the gate g.
template <typename A, bool TANH>
FASTDIFF_GELU_HD A geglu(A h, A g) { return h * gelu<A, TANH>(g); }

// The gradients of one GEGLU output with upstream gradient dy: ∂h = dy·GELU(g), ∂g = dy·h·GELU'(g).
template <typename A>
struct GegluGrads {
  A h, g;
};

template <typename A, bool TANH>
FASTDIFF_GELU_HD GegluGrads<A> geglu_grads(A dy, A h, A g) {
  return {dy * gelu<A, TANH>(g), dy * h * gelu_grad<A, TANH>(g)};
}

}  // namespace gelu
}  // namespace fastdiff
