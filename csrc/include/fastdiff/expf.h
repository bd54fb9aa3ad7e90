// e^v in float for the vectorised CPU loops and the CUDA kernels: Cephes expf (Cody-Waite reduction by ln 2,
// degree-5 polynomial, ~1 ulp), branch-free so g++ vectorises it. The one copy: AdaGN's SiLU (csrc/cpu/adagn.cpp)
// and GELU (fastdiff/gelu.h) both call it. No torch headers.
#pragma once

#include <string.h>

#include <cstdint>

#include "fastdiff/macros.h"

// Always inlined: the CPU loops vectorise (and their AVX2 / AVX-512 clones use the wide ISA) only with it inlined.
#if defined(__CUDACC__)
#define FASTDIFF_INLINE_HD FASTDIFF_HD
#elif defined(__GNUC__) || defined(__clang__)
#define FASTDIFF_INLINE_HD inline __attribute__((always_inline))
#else
#define FASTDIFF_INLINE_HD inline
#endif

namespace fastdiff {

// e^v for v in [-87, 88] (callers clamp). k = round(v/ln 2) by the 1.5·2^23 shifter, whose low mantissa bits then
// hold k (no float -> int conversion); 2^k is built in the exponent field.
FASTDIFF_INLINE_HD float expf_poly(float v) {
  const float shifted = v * 1.44269504088896341f + 12582912.0f;
  const float k = shifted - 12582912.0f;
  const float r = v - k * 0.693359375f - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t ki;
  memcpy(&ki, &shifted, sizeof ki);
  ki = (ki - 0x4B400000 + 127) << 23;
  float scale;
  memcpy(&scale, &ki, sizeof scale);
  return p * scale;
}

}  // namespace fastdiff
