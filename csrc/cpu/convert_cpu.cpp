// Half / BFloat16 <-> float for whole row chunks (cpu_loop.h), bit-identical to c10's scalar conversions
// (checked over all 2^16 inputs and all 2^32 floats, NaNs included). Per element inside the kernels' loops,
// c10::Half's software conversion (fp16_ieee_{to,from}_fp32_value: this build has no CPU_CAPABILITY) did not
// vectorise, nor did BFloat16's rounding with its NaN branch: the former ddim_step kernel at 8x3x128x128 (2-core
// EPYC) took 2.2 ms in fp16 and 0.35 ms in bf16 against 0.13 ms in fp32; with these passes both take ~0.16 ms.
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
// vcvtps2ph with round-to-nearest-even rounds as fp16_ieee_from_fp32_value (subnormals and overflow to inf
// included), but keeps a NaN's top payload bits where c10 writes sign | 0x7E00: redo the NaN lanes (bits of
// `nan`) in c10. (vcvtph2ps is exact as the software conversion, NaNs quietened with their payload in both.)
void c10_nans(const float* src, c10::Half* dst, unsigned nan) {
  for (; nan != 0; nan &= nan - 1) {
    const int lane = __builtin_ctz(nan);
    dst[lane] = static_cast<c10::Half>(src[lane]);
  }
}

// 16 lanes with AVX-512, else 8 with F16C: per element of a 1024-element chunk in L1 on this Zen 4, F16C's
// 256-bit loop took 0.035-0.08 ns (depending on the buffers' relative addresses), the 512-bit one 0.02-0.03.
__attribute__((target("avx512f"))) void half_to_float_avx512(const c10::Half* src, float* dst, int64_t len) {
  int64_t j = 0;
  for (; j + 16 <= len; j += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + j));
    _mm512_storeu_ps(dst + j, _mm512_maskz_cvtph_ps(0xFFFF, h));  // maskz: see float_to_half_avx512
  }
  half_to_float_scalar(src + j, dst + j, len - j);
}

__attribute__((target("avx512f"))) void float_to_half_avx512(const float* src, c10::Half* dst, int64_t len) {
  int64_t j = 0;
  for (; j + 16 <= len; j += 16) {
    const __m512 v = _mm512_loadu_ps(src + j);
    // maskz: the unmasked forms trip GCC 12's -Wmaybe-uninitialized inside the intrinsics
    const __m256i h = _mm512_maskz_cvtps_ph(0xFFFF, v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j), h);
    c10_nans(src + j, dst + j, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
  }
  float_to_half_scalar(src + j, dst + j, len - j);
}

__attribute__((target("avx,f16c"))) void half_to_float_f16c(const c10::Half* src, float* dst, int64_t len) {
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
  }
  half_to_float_scalar(src + j, dst + j, len - j);
}

__attribute__((target("avx,f16c"))) void float_to_half_f16c(const float* src, c10::Half* dst, int64_t len) {
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256 v = _mm256_loadu_ps(src + j);
    const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j), h);
    c10_nans(src + j, dst + j, _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  }
  float_to_half_scalar(src + j, dst + j, len - j);
}
#endif

struct HalfConversions {
  void (*to_float)(const c10::Half*, float*, int64_t) = half_to_float_scalar;
  void (*from_float)(const float*, c10::Half*, int64_t) = float_to_half_scalar;
};

HalfConversions pick_half_conversions() {
  HalfConversions c;
#ifdef FASTDIFF_F16C
  __builtin_cpu_init();  // may run before libgcc's own constructor (static initialisation of this library)
  if (__builtin_cpu_supports("avx512f")) {
    c = {half_to_float_avx512, float_to_half_avx512};
  } else if (__builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c")) {
    c = {half_to_float_f16c, float_to_half_f16c};
  }
#endif
  return c;
}

const HalfConversions kHalf = pick_half_conversions();

}  // namespace

void convert(const c10::Half* src, float* dst, int64_t len) { kHalf.to_float(src, dst, len); }

void convert(const float* src, c10::Half* dst, int64_t len) { kHalf.from_float(src, dst, len); }

// BFloat16 is the top half of a float: exact.
FASTDIFF_CPU_CLONES void convert(const c10::BFloat16* src, float* dst, int64_t len) {
  for (int64_t j = 0; j < len; ++j) dst[j] = std::bit_cast<float>(static_cast<uint32_t>(src[j].x) << 16);
}

// c10::detail::round_to_nearest_even: + 0x7FFF + the kept lowest bit, truncate; every NaN becomes 0x7FC0.
FASTDIFF_CPU_CLONES void convert(const float* src, c10::BFloat16* dst, int64_t len) {
  for (int64_t j = 0; j < len; ++j) {
    const uint32_t u = std::bit_cast<uint32_t>(src[j]);
    const uint16_t rounded = static_cast<uint16_t>((u + ((u >> 16) & 1) + 0x7FFFu) >> 16);
    dst[j].x = src[j] != src[j] ? uint16_t{0x7FC0} : rounded;
  }
}

}  // namespace cpu
}  // namespace fastdiff
