// Half / BFloat16 <-> float for whole row chunks (cpu_loop.h), bit-identical to c10's scalar conversions.
// Per element, c10::Half's software conversion (fp16_ieee_{to,from}_fp32_value: this build has no CPU_CAPABILITY)
// does not vectorise: fp16 ddim_step at 8x3x128x128 took 2.3 ms against 0.13 ms in fp32. F16C converts 8 lanes
// per instruction; BFloat16's rounding is integer arithmetic that vectorises once its NaN branch is a select.
#include <bit>
#include <cstdint>

#include "cpu_loop.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FASTDIFF_F16C 1
#endif

namespace fastdiff {
namespace cpu {
namespace {

void half_to_float_scalar(const c10::Half* src, float* dst, int64_t len) {
  for (int64_t j = 0; j < len; ++j) dst[j] = static_cast<float>(src[j]);
}

void float_to_half_scalar(const float* src, c10::Half* dst, int64_t len) {
  for (int64_t j = 0; j < len; ++j) dst[j] = static_cast<c10::Half>(src[j]);
}

#ifdef FASTDIFF_F16C
// vcvtph2ps is exact, as the software conversion (NaNs come out quiet with their payload in both).
__attribute__((target("avx,f16c"))) void half_to_float_f16c(const c10::Half* src, float* dst, int64_t len) {
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j));
    _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(h));
  }
  half_to_float_scalar(src + j, dst + j, len - j);
}

// vcvtps2ph with round-to-nearest-even rounds as fp16_ieee_from_fp32_value (subnormals and overflow to inf
// included), but keeps a NaN's top payload bits where c10 writes sign | 0x7E00: patch the NaN lanes.
__attribute__((target("avx,f16c"))) void float_to_half_f16c(const float* src, c10::Half* dst, int64_t len) {
  const __m128i abs_mask = _mm_set1_epi16(0x7FFF), inf = _mm_set1_epi16(0x7C00);
  const __m128i mantissa = _mm_set1_epi16(0x03FF), quiet_nan = _mm_set1_epi16(0x7E00);
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m128i nan = _mm_cmpgt_epi16(_mm_and_si128(h, abs_mask), inf);  // |h| > inf, as int16 (both < 2^15)
    h = _mm_or_si128(_mm_andnot_si128(_mm_and_si128(nan, mantissa), h), _mm_and_si128(nan, quiet_nan));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j), h);
  }
  float_to_half_scalar(src + j, dst + j, len - j);
}

bool has_f16c() {
  __builtin_cpu_init();  // may run before libgcc's own constructor (static initialisation of this library)
  return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
}

const bool kF16c = has_f16c();
#endif

}  // namespace

void convert(const c10::Half* src, float* dst, int64_t len) {
#ifdef FASTDIFF_F16C
  if (kF16c) return half_to_float_f16c(src, dst, len);
#endif
  half_to_float_scalar(src, dst, len);
}

void convert(const float* src, c10::Half* dst, int64_t len) {
#ifdef FASTDIFF_F16C
  if (kF16c) return float_to_half_f16c(src, dst, len);
#endif
  float_to_half_scalar(src, dst, len);
}

// BFloat16 is the top half of a float: exact.
void convert(const c10::BFloat16* src, float* dst, int64_t len) {
  for (int64_t j = 0; j < len; ++j) dst[j] = std::bit_cast<float>(static_cast<uint32_t>(src[j].x) << 16);
}

// c10::detail::round_to_nearest_even: + 0x7FFF + the kept lowest bit, truncate; every NaN becomes 0x7FC0.
void convert(const float* src, c10::BFloat16* dst, int64_t len) {
  for (int64_t j = 0; j < len; ++j) {
    const uint32_t u = std::bit_cast<uint32_t>(src[j]);
    const uint16_t rounded = static_cast<uint16_t>((u + ((u >> 16) & 1) + 0x7FFFu) >> 16);
    dst[j].x = src[j] != src[j] ? uint16_t{0x7FC0} : rounded;
  }
}

}  // namespace cpu
}  // namespace fastdiff
