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

// No floating-point contraction in the kernels that include this (put it after the includes): the clones for
// x86-64-v3 / v4 have FMA, and g++ fuses a·b + c into one rounding by default (-ffp-contract=fast, also with
// -std=c++20), which would change results with the machine (the default clone has no FMA) and leave the
// reference's operation order. Functions defined after it compile with contraction off; clang takes the pragma
// at file scope too.
#if defined(__clang__)
#define FASTDIFF_CPU_NO_FP_CONTRACT _Pragma("clang fp contract(off)")
#elif defined(__GNUC__)
#define FASTDIFF_CPU_NO_FP_CONTRACT _Pragma("GCC optimize(\"fp-contract=off\")")
#else
#define FASTDIFF_CPU_NO_FP_CONTRACT
#endif

namespace fastdiff {
namespace cpu {

constexpr int64_t kChunk = 1024;  // elements per work item: stack buffers stay in L1

// Elements below which a loop runs on one thread (at::parallel_for's grain, counted in elements): a memory-bound
// pass over ~32K elements takes a few µs, what waking the OpenMP team costs (torch's elementwise grain, 32768).
constexpr int64_t kGrainElements = 32768;
// The same for loops that draw Philox noise (~4 ns an element on one core): a couple of chunks a thread already pay.
constexpr int64_t kNoiseGrainElements = 2048;

// Elements per work item for a loop that needs no kChunk buffer (it reads and writes the tensors in place): fewer
// calls, each long enough that its setup does not count.
constexpr int64_t kLargeChunk = 16 * kChunk;

// f(n, begin, end) over chunks [begin, end) of at most `chunk` elements of every row n of an [N, M] view, in
// parallel once there are more than grain_elements elements.
template <typename F>
void for_each_row_chunk(int64_t rows, int64_t m, const F& f, int64_t grain_elements = kGrainElements,
                        int64_t chunk = kChunk) {
  const int64_t chunks = (m + chunk - 1) / chunk;
  const int64_t per_item = std::max<int64_t>(1, std::min(m, chunk));
  const int64_t grain = std::max<int64_t>(1, grain_elements / per_item);
  at::parallel_for(0, rows * chunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t n = u / chunks, c = u % chunks;
      f(n, c * chunk, std::min(m, (c + 1) * chunk));
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

// z[j] = tl.randn(seed, counter + j) for j < len <= kChunk, within the rounding of log / cos (docs/architecture.md, "One noise stream"): vectorised
// Philox words, then a vectorised Box-Muller (philox_cpu.cpp, box_muller_cpu.h).
void randn_chunk(float* z, int64_t len, uint64_t seed, uint64_t counter);

template <typename A>
void fill_randn(A* z, int64_t len, uint64_t seed, uint64_t counter) {
  if constexpr (std::is_same_v<A, float>) {
    randn_chunk(z, len, seed, counter);
  } else {
    float zf[kChunk];
    randn_chunk(zf, len, seed, counter);
    for (int64_t j = 0; j < len; ++j) z[j] = static_cast<A>(zf[j]);
  }
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
