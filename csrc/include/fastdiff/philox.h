// Philox4x32-10 + Box-Muller: bit-compatible with Triton's tl.randn(seed, offset)
// (fastdiff/ops/philox.py). Counter (lo32(c), hi32(c), 0, 0) with c = offset + flat index, key (lo32(seed), hi32(seed)).
#pragma once

#include "fastdiff/macros.h"

namespace fastdiff {
namespace philox {

constexpr uint32_t ROUND_A = 0xD2511F53u, ROUND_B = 0xCD9E8D57u;
constexpr uint32_t KEY_A = 0x9E3779B9u, KEY_B = 0xBB67AE85u;

FASTDIFF_HD uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* lo) {
#if defined(__CUDA_ARCH__)
  *lo = a * b;
  return __umulhi(a, b);
#else
  const uint64_t p = static_cast<uint64_t>(a) * b;  // vectorises to pmuludq on x86
  *lo = static_cast<uint32_t>(p);
  return static_cast<uint32_t>(p >> 32);
#endif
}

// The first two output words of Philox4x32-10 on counter (c, 0, 0) under `seed` (Triton uses only these two).
FASTDIFF_HD void philox_2words(uint64_t seed, uint64_t counter, uint32_t* w0, uint32_t* w1) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t lo_b, lo_a;
    const uint32_t hi_b = mulhilo(ROUND_B, c2, &lo_b);
    const uint32_t hi_a = mulhilo(ROUND_A, c0, &lo_a);
    c0 = hi_b ^ c1 ^ k0;
    c1 = lo_b;
    c2 = hi_a ^ c3 ^ k1;
    c3 = lo_a;
    k0 += KEY_A;
    k1 += KEY_B;
  }
  *w0 = c0;
  *w1 = c1;
}

// Triton's uint_to_uniform_float: the word as int32, negatives mapped to -x-1 (= ~x), times 2^-31: [0, 1).
FASTDIFF_HD float uniform(uint32_t word) {
  int32_t x = static_cast<int32_t>(word);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

// Box-Muller on two uniforms, as tl.randn: √(−2 log max(u1, 1e-7)) · cos(2π u2).
FASTDIFF_HD float box_muller(float u1, float u2) {
  u1 = u1 > 1.0e-7f ? u1 : 1.0e-7f;
  return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307179586f * u2);
}

// One standard normal: tl.randn(seed, counter).
FASTDIFF_HD float randn(uint64_t seed, uint64_t counter) {
  uint32_t w0, w1;
  philox_2words(seed, counter, &w0, &w1);
  return box_muller(uniform(w0), uniform(w1));
}

}  // namespace philox
}  // namespace fastdiff
