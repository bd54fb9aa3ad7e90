// Loop helpers shared by the CPU kernels: parallel row chunks, chunk conversion from / to the storage type,
// per-sample coefficient gather, Philox fill, and static dispatch of loop-invariant flags so each inner loop is
// branch-free and vectorises.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "fastdiff/coefs.h"
#include "fastdiff/philox.h"

// Marks a plain loop to be compiled also for AVX2 and AVX-512 (x86-64-v3 / v4), the copy picked at load time.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define FASTDIFF_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTDIFF_CPU_CLONES
#endif

namespace fastdiff {
namespace cpu {

constexpr int64_t kChunk = 1024;  // elements per work item: stack buffers stay in L1

// f(n, begin, end) over chunks [begin, end) of every row n of an [N, M] view, in parallel.
template <typename F>
void for_each_row_chunk(int64_t rows, int64_t m, const F& f) {
  const int64_t chunks = (m + kChunk - 1) / kChunk;
  at::parallel_for(0, rows * chunks, /*grain_size=*/16, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t n = u / chunks, c = u % chunks;
      f(n, c * kChunk, std::min(m, (c + 1) * kChunk));
    }
  });
}

// dst[j] = static_cast<D>(src[j]) for j < len, bit for bit. The Half and BFloat16 <-> float overloads
// (convert_cpu.cpp) convert whole chunks with vector instructions instead (see there for the numbers).
void convert(const c10::Half* src, float* dst, int64_t len);
void convert(const float* src, c10::Half* dst, int64_t len);
void convert(const c10::BFloat16* src, float* dst, int64_t len);
void convert(const float* src, c10::BFloat16* dst, int64_t len);

template <typename S, typename D>
void convert(const S* src, D* dst, int64_t len) {
  for (int64_t j = 0; j < len; ++j) dst[j] = static_cast<D>(src[j]);
}

// Kernels compute on chunks of A values (float, or double for fp64) and store T, so the inner loops see only
// A and vectorise. When T is A the chunk is the tensor's memory itself; otherwise a stack buffer of kChunk A
// values (sized 1 when unused) converted in one pass.
template <typename A, typename T>
constexpr int64_t kBuf = std::is_same_v<A, T> ? 1 : kChunk;

// len elements of src read as A: src itself, or buf holding the conversion; null stays null.
template <typename A, typename T>
const A* load(const T* src, A* buf, int64_t len) {
  if constexpr (std::is_same_v<A, T>) {
    return src;
  } else {
    if (src == nullptr) return nullptr;
    convert(src, buf, len);
    return buf;
  }
}

// Where to write len results bound for dst: dst itself, or buf (then store(buf, dst, len)); null stays null.
template <typename A, typename T>
A* out_buf(T* dst, A* buf) {
  if constexpr (std::is_same_v<A, T>) {
    return dst;
  } else {
    return dst != nullptr ? buf : nullptr;
  }
}

template <typename A, typename T>
void store(const A* buf, T* dst, int64_t len) {
  if constexpr (!std::is_same_v<A, T>) {
    if (dst != nullptr) convert(buf, dst, len);
  }
}

// out[n] = make(row, n) with row = &coefs[t[n], 0] (float or double), for every sample n. coefs: a contiguous
// [T, NCOL] table of any width (the [T, NCOEF] schedule table, the [S, STEP_NCOL] sampler step table).
template <typename S, typename F>
std::vector<S> per_sample(const at::Tensor& coefs, const at::Tensor& t, const F& make) {
  const int64_t* tp = t.data_ptr<int64_t>();
  const int64_t ncol = coefs.size(1);
  std::vector<S> out;
  out.reserve(t.numel());
  AT_DISPATCH_FLOATING_TYPES(coefs.scalar_type(), "fastdiff_coefs", [&] {
    const scalar_t* base = coefs.data_ptr<scalar_t>();
    for (int64_t n = 0; n < t.numel(); ++n) out.push_back(make(base + tp[n] * ncol, tp[n]));
  });
  return out;
}

// u1[j], u2[j] = Triton's uniforms of the Philox words for counter + j, j < len (see philox_cpu.cpp).
void philox_uniforms(float* u1, float* u2, int64_t len, uint64_t seed, uint64_t counter);

// z[j] = tl.randn(seed, counter + j) for j < len <= kChunk: vectorised Philox words, then Box-Muller (scalar
// logf/cosf calls, ~45% of the time).
template <typename A>
void fill_randn(A* z, int64_t len, uint64_t seed, uint64_t counter) {
  float u1[kChunk], u2[kChunk];
  philox_uniforms(u1, u2, len, seed, counter);
  for (int64_t j = 0; j < len; ++j) z[j] = static_cast<A>(philox::box_muller(u1[j], u2[j]));
}

// f(std::bool_constant<b>...) for runtime flags b...: one branch-free instantiation per combination.
template <typename F>
void with_flags(const F& f) { f(); }

template <typename F, typename... Rest>
void with_flags(const F& f, bool b, Rest... rest) {
  if (b) {
    with_flags([&](auto... bs) { f(std::true_type{}, bs...); }, rest...);
  } else {
    with_flags([&](auto... bs) { f(std::false_type{}, bs...); }, rest...);
  }
}

// f(std::integral_constant<int, k>) for a runtime count 0 <= k <= Max: loops over k items get a compile-time trip
// count, so they unroll and the inner loop stays branch-free.
template <int Max, typename F>
void with_count(int k, const F& f) {
  if constexpr (Max == 0) {
    f(std::integral_constant<int, 0>{});
  } else if (k == Max) {
    f(std::integral_constant<int, Max>{});
  } else {
    with_count<Max - 1>(k, f);
  }
}

// The step's noise for row elements [b, e): the caller's tensor (read as A, z unused when T is A) or
// Philox(seed, offset + n·M + i) in z. Null when there is no noise term for this chunk.
template <typename A, typename T>
const A* chunk_noise(A* z, const T* noise, int64_t seed, int64_t offset, int64_t n, int64_t m, int64_t b,
                     int64_t e) {
  if (noise != nullptr) return load(noise + n * m + b, z, e - b);
  if (seed < 0) return nullptr;
  fill_randn(z, e - b, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset) + static_cast<uint64_t>(n * m + b));
  return z;
}

template <typename T>
const T* ptr_or_null(const at::Tensor& v) { return v.defined() ? v.data_ptr<T>() : nullptr; }

}  // namespace cpu
}  // namespace fastdiff
