// AdaGN forward (ADM §3): out = act(GroupNorm(x; G, eps, gamma, beta)·(1 + scale) + shift), math in
// fastdiff/groupnorm.h (the CPU kernel's too). Two kernels, no host synchronisation:
//  1. split statistics: grid (SPLIT, N·G); block (split, row) folds slice `split` of group `row` (C/G·S contiguous
//     values) into a Welford triple, per thread then warp (shuffles) then block, and writes it to the workspace.
//     SPLIT is chosen so the grid holds >= 4 blocks per SM even at batch 1 with few groups.
//  2. apply: grid (spatial blocks, N·C); thread 0 merges its group's SPLIT triples (Chan's formula), every thread
//     then maps out = act(a·(x - mean) + b) over its channel's spatial positions.
// Known costs, to be measured and fixed on a GPU: the block waits while thread 0 merges up to kMaxSplit triples
// from global memory, and that merge is repeated for every channel of a group (a per-group finalise kernel writing
// mean / rstd once would remove both); loads are scalar (2 bytes in fp16/bf16) where 16-byte packs would do; the
// per-element divisions are exact (kept: they are the CPU kernel's math, groupnorm.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "adagn_launch.h"
#include "device.cuh"
#include "fastdiff/groupnorm.h"

namespace fastdiff {
namespace cuda {
namespace {

constexpr int kStatThreads = 256;
constexpr int kMaxSplit = 64;

template <typename A>
__device__ __forceinline__ gn::Welford<A> shfl_down(gn::Welford<A> w, int delta) {
  return {__shfl_down_sync(0xffffffffu, w.count, delta), __shfl_down_sync(0xffffffffu, w.mean, delta),
          __shfl_down_sync(0xffffffffu, w.m2, delta)};
}

// The block's Welford triple, valid in thread 0.
template <typename A>
__device__ gn::Welford<A> block_combine(gn::Welford<A> w) {
  __shared__ A sc[kStatThreads / 32], sm[kStatThreads / 32], s2[kStatThreads / 32];
  for (int d = 16; d > 0; d >>= 1) w = gn::combine(w, shfl_down(w, d));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    sc[warp] = w.count;
    sm[warp] = w.mean;
    s2[warp] = w.m2;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / 32;
    w = lane < warps ? gn::Welford<A>{sc[lane], sm[lane], s2[lane]} : gn::Welford<A>{A(0), A(0), A(0)};
    for (int d = 16; d > 0; d >>= 1) w = gn::combine(w, shfl_down(w, d));
  }
  return w;
}

template <typename T>
__global__ void adagn_stats_kernel(const T* __restrict__ x, int64_t rows, int64_t len, int64_t chunk,
                                   acc_t<T>* __restrict__ part) {
  using A = acc_t<T>;
  const int64_t split = blockIdx.x;
  const int64_t begin = split * chunk, end = begin + chunk < len ? begin + chunk : len;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {  // grid.y is capped at 65535
    const T* gx = x + row * len;
    gn::Welford<A> w{A(0), A(0), A(0)};
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const A v = to_acc(gx[i]);
      w.count += A(1);
      const A delta = v - w.mean;
      w.mean += delta / w.count;
      w.m2 += delta * (v - w.mean);
    }
    w = block_combine(w);
    if (threadIdx.x == 0) {
      A* o = part + (row * gridDim.x + split) * 3;
      o[0] = w.count;
      o[1] = w.mean;
      o[2] = w.m2;
    }
    __syncthreads();  // block_combine's shared memory is reused by the next row
  }
}

template <typename T>
__global__ void adagn_apply_kernel(const T* __restrict__ x, T* __restrict__ out, const acc_t<T>* __restrict__ part,
                                   int split, const acc_t<T>* __restrict__ gamma, const acc_t<T>* __restrict__ beta,
                                   const acc_t<T>* __restrict__ scale, const acc_t<T>* __restrict__ shift,
                                   acc_t<T>* __restrict__ mean_out, acc_t<T>* __restrict__ rstd_out, int64_t n_total, int64_t c_total,
                                   int64_t d, int64_t g_total, int64_t s, acc_t<T> eps, bool silu) {
  using A = acc_t<T>;
  __shared__ gn::Affine<A> f;
  for (int64_t nc = blockIdx.y; nc < n_total * c_total; nc += gridDim.y) {  // grid.y is capped at 65535
    const int64_t n = nc / c_total, c = nc % c_total, row = n * g_total + c / d;
    if (threadIdx.x == 0) {
      gn::Welford<A> w{A(0), A(0), A(0)};
      for (int k = 0; k < split; ++k) {
        const A* p = part + (row * split + k) * 3;
        w = gn::combine(w, gn::Welford<A>{p[0], p[1], p[2]});
      }
      const A r = gn::rstd(w, eps);
      f = gn::channel_affine(w.mean, r, gamma[c], beta[c], scale != nullptr ? scale[nc] : A(0),
                             shift != nullptr ? shift[nc] : A(0));
      if (blockIdx.x == 0 && c % d == 0) {
        mean_out[row] = w.mean;
        rstd_out[row] = r;
      }
    }
    __syncthreads();
    const gn::Affine<A> af = f;
    const T* xr = x + nc * s;
    T* orow = out + nc * s;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < s;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const A z = gn::apply(af, to_acc(xr[i]));
      orow[i] = from_acc<T>(silu ? gn::silu(z) : z);
    }
    __syncthreads();  // f is rewritten for the next channel
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Split {
  int split;
  int64_t chunk;
};

int current_device_sms() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return 132;
  }
  return sms;
}

Split choose_split(const AdaGNParams& p) {
  const int num_sms = current_device_sms();
  const int64_t len = p.c / p.g * p.s, groups = p.n * p.g;
  const int64_t want = ceil_div(4 * static_cast<int64_t>(num_sms > 0 ? num_sms : 132), groups);
  // Each slice keeps at least 4 values per thread so the per-block reduction is amortised.
  const int64_t most = ceil_div(len, 4 * kStatThreads);
  int64_t split = want < most ? want : most;
  split = split < 1 ? 1 : (split > kMaxSplit ? kMaxSplit : split);
  return {static_cast<int>(split), ceil_div(len, split)};
}

}  // namespace

int64_t adagn_workspace_bytes(DType dtype, const AdaGNParams& p) {
  const int64_t elem = dtype == DType::kDouble ? 8 : 4;
  return p.n * p.g * choose_split(p).split * 3 * elem;
}

void launch_adagn(DType dtype, const AdaGNParams& p, void* workspace, cudaStream_t stream) {
  if (p.n == 0 || p.c == 0 || p.s == 0) return;
  const Split sp = choose_split(p);
  dispatch_dtype(dtype, [&](auto tt) {
    using T = typename decltype(tt)::type;
    using A = acc_t<T>;
    A* part = static_cast<A*>(workspace);
    const T* x = static_cast<const T*>(p.x);
    const int64_t len = p.c / p.g * p.s;
    const auto capped = [](int64_t v) { return static_cast<unsigned>(v < 65535 ? v : 65535); };
    adagn_stats_kernel<T><<<dim3(sp.split, capped(p.n * p.g)), kStatThreads, 0, stream>>>(x, p.n * p.g, len,
                                                                                          sp.chunk, part);
    const int threads = p.s >= 256 ? 256 : static_cast<int>((p.s + 31) / 32 * 32);
    const int64_t bx = ceil_div(p.s, threads);
    adagn_apply_kernel<T><<<dim3(static_cast<unsigned>(bx < 1024 ? bx : 1024), capped(p.n * p.c)), threads, 0,
                            stream>>>(
        x, static_cast<T*>(p.out), part, sp.split, static_cast<const A*>(p.gamma), static_cast<const A*>(p.beta),
        static_cast<const A*>(p.scale), static_cast<const A*>(p.shift), static_cast<A*>(p.mean),
        static_cast<A*>(p.rstd), p.n, p.c, p.c / p.g, p.g, p.s, static_cast<A>(p.eps), p.silu);
  });
}

}  // namespace cuda
}  // namespace fastdiff
