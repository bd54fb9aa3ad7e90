// The CPU noise stream (fastdiff/philox.h) a chunk at a time: the Philox words as uniforms, then Box-Muller.
//
// Philox: with AVX-512 or AVX2 (picked at run time), explicit vectors of 64-bit lanes, one counter a lane, whose low
// halves hold the 32-bit words: vpmuludq multiplies exactly those (32x32 -> 64 bits, the high word a shift away)
// and XOR keeps the halves apart, so the high halves may hold anything. That is 6 instructions a round for 8
// counters; the auto-vectorised loop (kept for other machines) widens and narrows 32-bit lanes around every
// multiply and took ~2x longer with AVX-512 on this Zen 4. The words, and so the uniforms, are bit-identical.
// Box-Muller: a plain loop (box_muller_cpu.h) that the compiler vectorises in the target_clones copies.
#include <cstdint>

#include "box_muller_cpu.h"
#include "cpu_loop.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FASTDIFF_PHILOX_X86 1
#endif

FASTDIFF_CPU_NO_FP_CONTRACT

namespace fastdiff {
namespace cpu {
namespace {

constexpr float kUniformScale = 4.6566127342e-10f;  // philox::uniform's 2^-31

// The scalar words (also the tail of the vector loops). FASTDIFF_CPU_CLONES: vectorised 2 / 4 / 8 lanes wide.
FASTDIFF_CPU_CLONES void uniforms_generic(float* u1, float* u2, int64_t len, uint64_t seed, uint64_t counter) {
  for (int64_t j = 0; j < len; ++j) {
    uint32_t w0, w1;
    philox::philox_2words(seed, counter + static_cast<uint64_t>(j), &w0, &w1);
    u1[j] = philox::uniform(w0);
    u2[j] = philox::uniform(w1);
  }
}

#ifdef FASTDIFF_PHILOX_X86
// The round keys (k0 + r·KEY_A, k1 + r·KEY_B mod 2^32), r < 10, as philox_2words adds them.
struct RoundKeys {
  uint32_t k0[10], k1[10];
  explicit RoundKeys(uint64_t seed) {
    uint32_t a = static_cast<uint32_t>(seed), b = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r, a += philox::KEY_A, b += philox::KEY_B) k0[r] = a, k1[r] = b;
  }
};

// The unmasked _mm512_mul_epu32 / srli / cvtepi64_epi32 trip GCC 12's -Wmaybe-uninitialized inside the
// intrinsics (as in convert_cpu.cpp): the maskz forms with every lane set are the same instructions.
__attribute__((target("avx512f"))) void uniforms_avx512(float* u1, float* u2, int64_t len, uint64_t seed,
                                                         uint64_t counter) {
  constexpr __mmask8 all = 0xFF;
  const RoundKeys keys(seed);
  const __m512i ra = _mm512_set1_epi64(philox::ROUND_A), rb = _mm512_set1_epi64(philox::ROUND_B);
  const __m512i lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  const __m256 scale = _mm256_set1_ps(kUniformScale);
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m512i c = _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(counter + j)), lanes);
    __m512i c0 = c, c1 = _mm512_maskz_srli_epi64(all, c, 32), c2 = _mm512_setzero_si512(),
            c3 = _mm512_setzero_si512();
    for (int r = 0; r < 10; ++r) {
      const __m512i pb = _mm512_maskz_mul_epu32(all, c2, rb), pa = _mm512_maskz_mul_epu32(all, c0, ra);
      // c0 = hi(pb) ^ c1 ^ k0, c2 = hi(pa) ^ c3 ^ k1 (0x96: three-way XOR)
      c0 = _mm512_ternarylogic_epi64(_mm512_maskz_srli_epi64(all, pb, 32), c1, _mm512_set1_epi64(keys.k0[r]), 0x96);
      c2 = _mm512_ternarylogic_epi64(_mm512_maskz_srli_epi64(all, pa, 32), c3, _mm512_set1_epi64(keys.k1[r]), 0x96);
      c1 = pb;
      c3 = pa;
    }
    // philox::uniform: the word as int32, negatives to ~x (x ^ (x >> 31)), to float, times 2^-31.
    __m256i w0 = _mm512_maskz_cvtepi64_epi32(all, c0), w1 = _mm512_maskz_cvtepi64_epi32(all, c1);
    w0 = _mm256_xor_si256(w0, _mm256_srai_epi32(w0, 31));
    w1 = _mm256_xor_si256(w1, _mm256_srai_epi32(w1, 31));
    _mm256_storeu_ps(u1 + j, _mm256_mul_ps(_mm256_cvtepi32_ps(w0), scale));
    _mm256_storeu_ps(u2 + j, _mm256_mul_ps(_mm256_cvtepi32_ps(w1), scale));
  }
  if (j < len) uniforms_generic(u1 + j, u2 + j, len - j, seed, counter + static_cast<uint64_t>(j));
}

// The low 32-bit halves of the 64-bit lanes of a (counters 0..3) and b (4..7), in counter order.
__attribute__((target("avx2"))) inline __m256i low_words(__m256i a, __m256i b) {
  const __m256i mixed = _mm256_castps_si256(
      _mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), _MM_SHUFFLE(2, 0, 2, 0)));
  return _mm256_permute4x64_epi64(mixed, _MM_SHUFFLE(3, 1, 2, 0));  // from a0 a1 b0 b1 a2 a3 b2 b3
}

__attribute__((target("avx2"))) void uniforms_avx2(float* u1, float* u2, int64_t len, uint64_t seed,
                                                    uint64_t counter) {
  const RoundKeys keys(seed);
  const __m256i ra = _mm256_set1_epi64x(philox::ROUND_A), rb = _mm256_set1_epi64x(philox::ROUND_B);
  const __m256i lanes_a = _mm256_set_epi64x(3, 2, 1, 0), lanes_b = _mm256_set_epi64x(7, 6, 5, 4);
  const __m256 scale = _mm256_set1_ps(kUniformScale);
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {  // two vectors of 4 counters
    const __m256i base = _mm256_set1_epi64x(static_cast<int64_t>(counter + j));
    const __m256i ca = _mm256_add_epi64(base, lanes_a), cb = _mm256_add_epi64(base, lanes_b);
    __m256i a0 = ca, a1 = _mm256_srli_epi64(ca, 32), a2 = _mm256_setzero_si256(), a3 = _mm256_setzero_si256();
    __m256i b0 = cb, b1 = _mm256_srli_epi64(cb, 32), b2 = _mm256_setzero_si256(), b3 = _mm256_setzero_si256();
    for (int r = 0; r < 10; ++r) {
      const __m256i k0 = _mm256_set1_epi64x(keys.k0[r]), k1 = _mm256_set1_epi64x(keys.k1[r]);
      const __m256i pab = _mm256_mul_epu32(a2, rb), paa = _mm256_mul_epu32(a0, ra);
      const __m256i pbb = _mm256_mul_epu32(b2, rb), pba = _mm256_mul_epu32(b0, ra);
      a0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pab, 32), a1), k0);
      a2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(paa, 32), a3), k1);
      b0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pbb, 32), b1), k0);
      b2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pba, 32), b3), k1);
      a1 = pab, a3 = paa, b1 = pbb, b3 = pba;
    }
    __m256i w0 = low_words(a0, b0), w1 = low_words(a1, b1);
    w0 = _mm256_xor_si256(w0, _mm256_srai_epi32(w0, 31));
    w1 = _mm256_xor_si256(w1, _mm256_srai_epi32(w1, 31));
    _mm256_storeu_ps(u1 + j, _mm256_mul_ps(_mm256_cvtepi32_ps(w0), scale));
    _mm256_storeu_ps(u2 + j, _mm256_mul_ps(_mm256_cvtepi32_ps(w1), scale));
  }
  if (j < len) uniforms_generic(u1 + j, u2 + j, len - j, seed, counter + static_cast<uint64_t>(j));
}
#endif

using UniformsFn = void (*)(float*, float*, int64_t, uint64_t, uint64_t);

UniformsFn pick_uniforms() {
#ifdef FASTDIFF_PHILOX_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return uniforms_avx512;
  if (__builtin_cpu_supports("avx2")) return uniforms_avx2;
#endif
  return uniforms_generic;
}

const UniformsFn uniforms = pick_uniforms();

// z[j] = box_muller_vec(u1[j], u2[j]): 4 / 8 / 16 lanes wide in the clones.
FASTDIFF_CPU_CLONES void box_muller_chunk(float* z, const float* u1, const float* u2, int64_t len) {
  for (int64_t j = 0; j < len; ++j) z[j] = vmath::box_muller_vec(u1[j], u2[j]);
}

}  // namespace

void randn_chunk(float* z, int64_t len, uint64_t seed, uint64_t counter) {
  float u1[kChunk], u2[kChunk];
  uniforms(u1, u2, len, seed, counter);
  box_muller_chunk(z, u1, u2, len);
}

}  // namespace cpu
}  // namespace fastdiff
