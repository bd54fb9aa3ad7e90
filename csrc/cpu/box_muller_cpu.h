// Box-Muller for the CPU noise stream with branch-free log, cos and sqrt, so the loop over a chunk vectorises (in
// the target_clones of philox_cpu.cpp; glibc's logf / cosf are calls the compiler cannot vectorise without
// -ffast-math, and sqrtf keeps a libm call for errno). CPU only: CUDA keeps fastdiff/philox.h's box_muller and
// its intrinsics. docs/architecture.md, "One noise stream" lets CPU and GPU noise differ within the rounding of log / cos. Checked against float64
// libm on every float of the inputs' ranges: log_pos is within 0.83 ulp of ln(u1) for u1 in [1e-7, 1] (glibc's
// logf: 0.79), cos_0_2pi within 0.001 ulp (of a float) of cos(t) for t in [0, 2π]; box_muller_vec is within
// 1.13 ulp of the float64 formula on 10^7 random uniform pairs and the edge values (0, 1e-7, ¼, ½, ¾, 1, ...),
// 0.98 ulp for every float u1 in [0, 1] (u2 = 0) and 0.86 ulp for every float u2 in [0, 1] (u1 = 0.3), where
// the scalar logf / cosf / sqrtf formula is within 2.35 ulp (it rounds three times, this once).
//
// log_pos and cos_0_2pi follow FreeBSD's msun e_logf.c, k_cosf.c and k_sinf.c, whose notice is:
//   Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved.
//   Developed at SunPro, a Sun Microsystems, Inc. business.
//   Permission to use, copy, modify, and distribute this software is freely granted, provided that this notice
//   is preserved.
#pragma once

#include <bit>
#include <cstdint>

namespace fastdiff {
namespace cpu {
namespace vmath {

// ln(x) for a normal positive finite float x (no zero, subnormal, inf or NaN handling: the noise stream's u1 is in
// [1e-7, 1]), as e_logf.c without its special cases: x = 2^k·(1 + f) with 1 + f in [√½, √2), s = f/(2 + f),
// ln(1 + f) = f − ½f² + s(½f² + R(s²)), R a minimax polynomial with |(log(1+s) − log(1−s))/s − 2 − R| < 2^-34.24;
// k·ln2 split in a head with few bits (exact products) and a tail.
inline float log_pos(float x) {
  constexpr float ln2_hi = 6.9313812256e-01f;  // 0x3f317180
  constexpr float ln2_lo = 9.0580006145e-06f;  // 0x3717f7d1
  constexpr float lg1 = 0.66666662693f, lg2 = 0.40000972152f, lg3 = 0.28498786688f, lg4 = 0.24279078841f;
  uint32_t ix = std::bit_cast<uint32_t>(x);
  ix += 0x3f800000u - 0x3f3504f3u;  // moves the mantissa range [√½, √2) to [1, 2): k is then the exponent field
  const int32_t k = static_cast<int32_t>(ix >> 23) - 0x7f;
  const float m = std::bit_cast<float>((ix & 0x007fffffu) + 0x3f3504f3u);  // 1 + f in [√½, √2)
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s;
  const float w = z * z;
  const float r = z * (lg1 + w * lg3) + w * (lg2 + w * lg4);
  const float hfsq = 0.5f * f * f;
  const float dk = static_cast<float>(k);
  return s * (hfsq + r) + dk * ln2_lo - hfsq + f + dk * ln2_hi;
}

// cos(t) for a float t in [0, 2π] (not beyond: the reduction keeps few quadrants exact), in double precision as
// k_cosf.c / k_sinf.c compute it (their minimax polynomials: |error| < 2^-34 on [−π/4, π/4]): t − q·π/2 with a
// two-part π/2 (q·hi exact for q <= 4), then ±cos or ±sin of the remainder by the quadrant's bits.
inline double cos_0_2pi(float t) {
  constexpr double two_over_pi = 6.36619772367581382433e-01;
  constexpr double pio2_hi = 1.57079632673412561417e+00;  // the first 33 bits of π/2
  constexpr double pio2_lo = 6.07710050650619224932e-11;  // π/2 − pio2_hi
  constexpr double round_magic = 6755399441055744.0;      // 1.5·2^52: adding it rounds to an integer in its low bits
  constexpr double c0 = -0.499999997251031003120, c1 = 0.0416666233237390631894, c2 = -0.00138867637746099294692,
                   c3 = 0.0000243904487962774090654;
  constexpr double s1 = -0.166666666416265235595, s2 = 0.0083333293858894631756, s3 = -0.000198393348360966317347,
                   s4 = 0.0000027183114939898219064;
  const double td = static_cast<double>(t);
  const double qm = td * two_over_pi + round_magic;
  const uint64_t q = std::bit_cast<uint64_t>(qm);  // round(t·2/π) in [0, 4] in the low bits
  const double qd = qm - round_magic;
  const double r = (td - qd * pio2_hi) - qd * pio2_lo;  // in [−π/4, π/4]
  const double z = r * r, w = z * z;
  const double cos_r = ((1.0 + z * c0) + w * c1) + (w * z) * (c2 + z * c3);
  const double zr = z * r;
  const double sin_r = (r + zr * (s1 + z * s2)) + zr * w * (s3 + z * s4);
  // cos(q·π/2 + r): q = 0: cos r, 1: −sin r, 2: −cos r, 3: sin r (4 = 0). Selected with bit masks: a ?: of the
  // two would let the compiler compute only the one taken, a branch that stops vectorisation (-ftrapping-math).
  const uint64_t pick_sin = 0 - (q & 1);
  const uint64_t sign = ((q + 1) & 2) << 62;  // q = 1, 2: negate
  return std::bit_cast<double>(
      ((std::bit_cast<uint64_t>(sin_r) & pick_sin) | (std::bit_cast<uint64_t>(cos_r) & ~pick_sin)) ^ sign);
}

// √d for a double d >= 0 (+0 included) to ~2^-34 relative: the bit-trick reciprocal square root and three Newton
// steps, then d·(1/√d). (sqrt itself does not vectorise without -fno-math-errno: the compiler keeps a libm call
// for negative inputs, to set errno.) The noise rounds the product √d·cos to float once, so this error is 0.001 ulp.
inline double sqrt_nonneg(double d) {
  double y = std::bit_cast<double>(0x5fe6eb50c7b537a9ull - (std::bit_cast<uint64_t>(d) >> 1));  // within 3.5%
  const double h = 0.5 * d;
  y = y * (1.5 - (h * y) * y);  // within 1.8e-3 (h·y first: d = 0 keeps y finite, y·1.5 each step, and d·y = 0)
  y = y * (1.5 - (h * y) * y);  // within 4.6e-6
  y = y * (1.5 - (h * y) * y);  // within 3.2e-11
  return d * y;
}

// philox::box_muller (√(−2 ln max(u1, 1e-7)) · cos(2π·u2), with fl(2π·u2) rounded as the scalar formula rounds it)
// with log_pos / cos_0_2pi / sqrt_nonneg for logf / cosf / sqrtf, and one rounding of √·cos to float instead of
// three. u1, u2 in [0, 1] (the stream's uniforms); the clamp compares bits, which orders non-negative floats (a
// float ?: here let the compiler fold log(1e-7) into a branch of its own, which stops vectorisation).
inline float box_muller_vec(float u1, float u2) {
  const uint32_t b1 = std::bit_cast<uint32_t>(u1), lo = std::bit_cast<uint32_t>(1.0e-7f);
  const float l = log_pos(std::bit_cast<float>(b1 > lo ? b1 : lo));
  const double d = std::bit_cast<double>(std::bit_cast<uint64_t>(-2.0 * static_cast<double>(l)) & ~(1ull << 63));
  return static_cast<float>(sqrt_nonneg(d) * cos_0_2pi(6.283185307179586f * u2));
}

}  // namespace vmath
}  // namespace cpu
}  // namespace fastdiff
