// Device helpers shared by the CUDA kernels: storage <-> accumulation conversions, 16-byte packs, coefficient rows,
// the row grid and dtype dispatch. No torch headers.
#pragma once

#include <assert.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "fastdiff/coefs.h"
#include "launchers.h"

namespace fastdiff {
namespace cuda {

// Accumulation type: float for fp16/bf16/fp32 storage, double for fp64 (README, Backends).
template <typename T> struct AccT { using type = float; };
template <> struct AccT<double> { using type = double; };
template <typename T> using acc_t = typename AccT<T>::type;

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v);
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }

// V consecutive elements, loaded / stored as one access (16 bytes for V = 16 / sizeof(T)).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load(const T* p) { return *reinterpret_cast<const Pack<T, V>*>(p); }

template <typename T, int V>
__device__ __forceinline__ void store(T* p, const Pack<T, V>& v) { *reinterpret_cast<Pack<T, V>*>(p) = v; }

// Row t of a contiguous [T, NCOL] table (the [T, NCOEF] schedule table, the [S, STEP_NCOL] sampler step table),
// or NaNs when t is out of range (never read out of bounds; asserts in debug builds only: setup.py and
// cuda-check build with -DNDEBUG), so a bad index poisons its sample instead of reading garbage.
template <typename R, int NCOL>
__device__ __forceinline__ void load_row(const R* coefs, int64_t table_len, int64_t t, R (&row)[NCOL]) {
  const bool ok = t >= 0 && t < table_len;
  assert(ok && "fastdiff: table row index out of range [0, T)");
#pragma unroll
  for (int k = 0; k < NCOL; ++k) row[k] = ok ? coefs[t * NCOL + k] : R(NAN);
}

// Whether a step draws in-kernel Philox noise, and its seed: *seed_ptr (device memory, so a captured CUDA graph
// sees the value at replay) or the scalar seed. Read once per thread; the 8 bytes sit in L2 after the first warp.
// P: a launch parameter struct with seed and seed_ptr (SamplerStepParams).
template <typename P>
__host__ __device__ __forceinline__ bool has_philox_seed(const P& p) {
  return p.seed_ptr != nullptr || p.seed >= 0;
}
template <typename P>
__device__ __forceinline__ uint64_t step_seed(const P& p) {
  return static_cast<uint64_t>(p.seed_ptr != nullptr ? *p.seed_ptr : p.seed);
}

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // beyond this, threads grid-stride (any tensor launches)

// Launch shape for `items` grid-strided work items (a flat kernel's packs, fastdiff/flat_packs.h): one item per
// thread, 256 threads a block, or fewer (a multiple of 32) for fewer items; at least one block.
struct FlatLaunch {
  unsigned blocks;
  int threads;
};

inline FlatLaunch flat_launch(int64_t items) {
  const int64_t threads = std::min<int64_t>(std::max<int64_t>((items + 31) / 32 * 32, 32), kThreads);
  const int64_t blocks = std::min<int64_t>(std::max<int64_t>((items + threads - 1) / threads, 1), kMaxBlocks);
  return {static_cast<unsigned>(blocks), static_cast<int>(threads)};
}

inline bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T> struct Tag { using type = T; };

// f(Tag<T>{}) for the storage dtype: fp16, bf16, fp32 or fp64.
template <typename F>
void dispatch_dtype(DType dtype, const F& f) {
  switch (dtype) {
    case DType::kHalf: f(Tag<__half>{}); break;
    case DType::kBFloat16: f(Tag<__nv_bfloat16>{}); break;
    case DType::kFloat: f(Tag<float>{}); break;
    case DType::kDouble: f(Tag<double>{}); break;
  }
}

// f(Tag<T>{}, Tag<R>{}) for the storage dtype T and the coefficient table's dtype R (float or double).
template <typename F>
void dispatch_dtypes(DType dtype, DType coefs_dtype, const F& f) {
  dispatch_dtype(dtype, [&](auto tt) {
    if (coefs_dtype == DType::kDouble) {
      f(tt, Tag<double>{});
    } else {
      f(tt, Tag<float>{});
    }
  });
}

// launch(std::integral_constant<int, V>, FlatLaunch) for a flat kernel over `elements` values: packs of
// V = 16 / sizeof(T) elements when every pointer (and row, see the kernel) allows 16-byte accesses, else V = 1.
// Registers and occupancy of the V > 1 sampler step: docs/architecture.md, "CUDA launch shapes".
template <typename T, typename F>
void launch_packs(int64_t elements, bool vec, const F& launch) {
  constexpr int V = 16 / sizeof(T);
  if (vec) {
    launch(std::integral_constant<int, V>{}, flat_launch((elements + V - 1) / V));
  } else {
    launch(std::integral_constant<int, 1>{}, flat_launch(elements));
  }
}

}  // namespace cuda
}  // namespace fastdiff
