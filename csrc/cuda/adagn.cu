// AdaGN forward (ADM §3): out = act(GroupNorm(x; G, eps, gamma, beta)·(1 + scale) + shift), math in
// fastdiff/groupnorm.h (the CPU kernel's too). x is read in place in its own layout and out keeps it
// (adagn_launch.h): [N, C, S] (contiguous) or [N, S, C] (channels_last / channels_last_3d). Three kernels, no host
// synchronisation:
//  1. split statistics, Welford triples of slices written to the workspace. A thread adds its values a pack at a time
//     (gn::welford_add_pack: one division per pack, not per value):
//     [N, C, S]: grid (SPLIT, N·G); block (split, row) folds slice `split` of group `row` (C/G·S contiguous values),
//       per thread (a 16-byte load per pack where the slices are aligned, else 4 values a block-stride apart) then
//       warp (shuffles) then block.
//     [N, S, C]: grid (SPLIT, channel blocks, N); a 32 x 8 block reads contiguous C-runs over position slice `split`
//       (a warp: 32 consecutive channel packs of one position, 16 bytes a thread where C and x allow, coalesced),
//       4 positions a pack, and writes one triple per channel.
//     SPLIT is chosen so the grid holds >= 4 blocks per SM even at batch 1.
//  2. finalise: one block per (sample, group) merges its triples (SPLIT, or SPLIT·C/G per-channel ones) with Chan's
//     formula, writes mean / rstd once and folds the per-(sample, channel) affine map (mean, a, b) into the
//     workspace, so nothing downstream repeats the merge.
//  3. apply: a grid-stride pass over x in 16-byte packs where the rows allow it (S, resp. C, a multiple of the pack
//     and the pointers aligned), scalar otherwise: out = act(a·(x − mean) + b) with the channel's folded map. SiLU
//     divides with __fdividef (MUFU.RCP and a multiply, within 2 ulp) where groupnorm.h's exact division would
//     take the IEEE sequence per value; fp64 keeps the exact one.
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
constexpr int kClThreadsX = 32, kClThreadsY = 8;  // [N, S, C] statistics block: channels x positions

template <typename A>
__device__ __forceinline__ gn::Welford<A> shfl_down(gn::Welford<A> w, int delta) {
  return {__shfl_down_sync(0xffffffffu, w.count, delta), __shfl_down_sync(0xffffffffu, w.mean, delta),
          __shfl_down_sync(0xffffffffu, w.m2, delta)};
}

// The block's Welford triple, valid in thread 0 (blockDim.x a multiple of 32, at most kStatThreads).
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

// 16-byte packs of T.
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

template <typename T, bool VEC>
__global__ void adagn_stats_ncs_kernel(const T* __restrict__ x, int64_t rows, int64_t len, int64_t chunk,
                                       acc_t<T>* __restrict__ part) {
  using A = acc_t<T>;
  constexpr int V = kVec<T>;
  const int64_t split = blockIdx.x;
  const int64_t begin = split * chunk, end = begin + chunk < len ? begin + chunk : len;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {  // grid.y is capped at 65535
    const T* gx = x + row * len;
    gn::Welford<A> w{A(0), A(0), A(0)};
    if constexpr (VEC) {  // begin, end and row·len are multiples of V, x 16-byte aligned
      for (int64_t i = begin + threadIdx.x * V; i < end; i += static_cast<int64_t>(blockDim.x) * V) {
        const Pack<T, V> p = load<T, V>(gx + i);
        A v[V];
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = to_acc(p.v[k]);
        gn::welford_add_pack(w, v);
      }
    } else {
      const int64_t bd = blockDim.x;
      int64_t i = begin + threadIdx.x;
      for (; i + 3 * bd < end; i += 4 * bd) {
        A v[4] = {to_acc(gx[i]), to_acc(gx[i + bd]), to_acc(gx[i + 2 * bd]), to_acc(gx[i + 3 * bd])};
        gn::welford_add_pack(w, v);
      }
      for (; i < end; i += bd) {
        A v[1] = {to_acc(gx[i])};
        gn::welford_add_pack(w, v);
      }
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

// [N, S, C]: per-channel triples part[((n·SPLIT + split)·C + c)·3] of position slice blockIdx.x, channels of block
// blockIdx.y, samples n = blockIdx.z, + gridDim.z, .... Thread (x, y) reads channels c0..c0+P−1,
// c0 = (blockIdx.y·32 + x)·P, as one access (P = 16 bytes of T: C a multiple of P and x aligned; or P = 1), at
// positions y, y + 8, ... of the slice, 4 positions a Welford pack.
template <typename T, int P>
__global__ void adagn_stats_nsc_kernel(const T* __restrict__ x, int64_t n_total, int64_t s, int64_t c_total,
                                       int64_t chunk, acc_t<T>* __restrict__ part) {
  using A = acc_t<T>;
  __shared__ A sc[kClThreadsY][kClThreadsX], sm[kClThreadsY][kClThreadsX], s2[kClThreadsY][kClThreadsX];
  const int64_t split = blockIdx.x;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * kClThreadsX + threadIdx.x) * P;
  const int64_t begin = split * chunk, end = begin + chunk < s ? begin + chunk : s;
  for (int64_t n = blockIdx.z; n < n_total; n += gridDim.z) {  // grid.z is capped at 65535
    gn::Welford<A> w[P];
#pragma unroll
    for (int k = 0; k < P; ++k) w[k] = gn::Welford<A>{A(0), A(0), A(0)};
    if (c0 < c_total) {  // the whole pack: c_total % P == 0
      const T* xs = x + n * s * c_total + c0;
      constexpr int64_t step = kClThreadsY;
      int64_t p = begin + threadIdx.y;
      for (; p + 3 * step < end; p += 4 * step) {
        Pack<T, P> q[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) q[r] = load<T, P>(xs + (p + r * step) * c_total);
#pragma unroll
        for (int k = 0; k < P; ++k) {
          A v[4] = {to_acc(q[0].v[k]), to_acc(q[1].v[k]), to_acc(q[2].v[k]), to_acc(q[3].v[k])};
          gn::welford_add_pack(w[k], v);
        }
      }
      for (; p < end; p += step) {
        const Pack<T, P> q = load<T, P>(xs + p * c_total);
#pragma unroll
        for (int k = 0; k < P; ++k) {
          A v[1] = {to_acc(q.v[k])};
          gn::welford_add_pack(w[k], v);
        }
      }
    }
#pragma unroll
    for (int k = 0; k < P; ++k) {  // channel c0 + k: fold the 8 position rows of the block
      sc[threadIdx.y][threadIdx.x] = w[k].count;
      sm[threadIdx.y][threadIdx.x] = w[k].mean;
      s2[threadIdx.y][threadIdx.x] = w[k].m2;
      __syncthreads();
      if (threadIdx.y == 0 && c0 < c_total) {
        gn::Welford<A> t = w[k];
        for (int y = 1; y < kClThreadsY; ++y) {
          t = gn::combine(t, gn::Welford<A>{sc[y][threadIdx.x], sm[y][threadIdx.x], s2[y][threadIdx.x]});
        }
        A* o = part + ((n * gridDim.x + split) * c_total + c0 + k) * 3;
        o[0] = t.count;
        o[1] = t.mean;
        o[2] = t.m2;
      }
      __syncthreads();  // the next channel reuses the shared rows
    }
  }
}

// One block per (sample, group) row = blockIdx.x: merge the group's triples, write mean / rstd, fold the affine map
// of each of its channels into coef[(n·C + c)·3] = (mean, a, b).
template <typename A, bool NSC>
__global__ void adagn_finalize_kernel(const A* __restrict__ part, int split, const A* __restrict__ gamma,
                                      const A* __restrict__ beta, const A* __restrict__ scale,
                                      const A* __restrict__ shift, A* __restrict__ mean_out, A* __restrict__ rstd_out,
                                      A* __restrict__ coef, int64_t c_total, int64_t d, int64_t g_total, A eps) {
  __shared__ A stats[2];
  const int64_t row = blockIdx.x, n = row / g_total, g = row % g_total;
  const int64_t items = NSC ? split * d : split;
  gn::Welford<A> w{A(0), A(0), A(0)};
  for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
    const A* p = NSC ? part + ((n * split + i / d) * c_total + g * d + i % d) * 3 : part + (row * split + i) * 3;
    w = gn::combine(w, gn::Welford<A>{p[0], p[1], p[2]});
  }
  w = block_combine(w);
  if (threadIdx.x == 0) {
    const A r = gn::rstd(w, eps);
    mean_out[row] = w.mean;
    rstd_out[row] = r;
    stats[0] = w.mean;
    stats[1] = r;
  }
  __syncthreads();
  for (int64_t ci = threadIdx.x; ci < d; ci += blockDim.x) {
    const int64_t c = g * d + ci, nc = n * c_total + c;
    const gn::Affine<A> f = gn::channel_affine(stats[0], stats[1], gamma[c], beta[c],
                                               scale != nullptr ? scale[nc] : A(0), shift != nullptr ? shift[nc] : A(0));
    coef[nc * 3] = f.mean;
    coef[nc * 3 + 1] = f.a;
    coef[nc * 3 + 2] = f.b;
  }
}

// SiLU z·σ(z) = z / (1 + e^−z): __fdividef in float (0 where 1 + e^−z > 2^126, i.e. z < −87, where z·σ(z) is
// below 1e−36 anyway), the exact division in double.
__device__ __forceinline__ float silu(float z) { return __fdividef(z, 1.0f + expf(-z)); }
__device__ __forceinline__ double silu(double z) { return gn::silu(z); }

template <typename T>
__device__ __forceinline__ T apply_one(const acc_t<T>* __restrict__ f, T v, bool act) {
  using A = acc_t<T>;
  const A z = gn::apply(gn::Affine<A>{f[0], f[1], f[2]}, to_acc(v));
  return from_acc<T>(act ? silu(z) : z);
}

// out = act(a·(x − mean) + b) over all N·C·S values in packs of P (P = 16 bytes, or 1): the channel of element e is
// (e / S) % C in [N, C, S] (one per pack: S % P == 0), e % C in [N, S, C] (consecutive: C % P == 0).
template <typename T, bool NSC, int P>
__global__ void adagn_apply_kernel(const T* __restrict__ x, T* __restrict__ out, const acc_t<T>* __restrict__ coef,
                                   int64_t total, int64_t c_total, int64_t s, bool silu) {
  using A = acc_t<T>;
  const int64_t packs = total / P;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = i * P;
    Pack<T, P> v = load<T, P>(x + e);
    if constexpr (NSC) {
      const int64_t n = e / (s * c_total), c = e % c_total;
      const A* f = coef + (n * c_total + c) * 3;
#pragma unroll
      for (int k = 0; k < P; ++k) v.v[k] = apply_one<T>(f + 3 * k, v.v[k], silu);
    } else {
      const A* f = coef + (e / s) * 3;  // (n·C + c)
#pragma unroll
      for (int k = 0; k < P; ++k) v.v[k] = apply_one<T>(f, v.v[k], silu);
    }
    store<T, P>(out + e, v);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int current_device_sms() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return 132;
  }
  return sms;
}

// Slices per group ([N, C, S]) or per sample ([N, S, C]) and the values (positions) each slice spans.
struct Split {
  int split;
  int64_t chunk;
};

// Channels per [N, S, C] statistics thread: a 16-byte pack of them where C is a multiple of it and x is aligned,
// else 1.
int channel_pack(DType dtype, const AdaGNParams& p) {
  const int v = 16 / (dtype == DType::kDouble ? 8 : dtype == DType::kFloat ? 4 : 2);
  return p.c % v == 0 && aligned16(p.x) ? v : 1;
}

Split choose_split(DType dtype, const AdaGNParams& p) {
  const int num_sms = current_device_sms();
  const int64_t target = 4 * static_cast<int64_t>(num_sms > 0 ? num_sms : 132);
  int64_t split, len;
  if (p.channels_last) {
    len = p.s;
    const int64_t blocks = p.n * ceil_div(p.c, kClThreadsX * channel_pack(dtype, p));
    const int64_t most = ceil_div(p.s, 4 * kClThreadsY);  // >= 4 positions per thread
    split = ceil_div(target, blocks);
    split = split < most ? split : most;
  } else {
    len = p.c / p.g * p.s;
    const int64_t most = ceil_div(len, 4 * kStatThreads);  // >= 4 values per thread amortise the block reduction
    split = ceil_div(target, p.n * p.g);
    split = split < most ? split : most;
  }
  split = split < 1 ? 1 : (split > kMaxSplit ? kMaxSplit : split);
  int64_t chunk = ceil_div(len, split);
  return {static_cast<int>(split), chunk};
}

// The [N, C, S] pack: slices of a multiple of 16 bytes, rows too, and x aligned.
template <typename T>
bool aligned(const void* ptr, int64_t count) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && count % kVec<T> == 0;
}

int64_t part_elems(const AdaGNParams& p, const Split& sp) {
  return p.channels_last ? p.n * sp.split * p.c * 3 : p.n * p.g * sp.split * 3;
}

}  // namespace

int64_t adagn_workspace_bytes(DType dtype, const AdaGNParams& p) {
  const int64_t elem = dtype == DType::kDouble ? 8 : 4;
  return (part_elems(p, choose_split(dtype, p)) + p.n * p.c * 3) * elem;
}

void launch_adagn(DType dtype, const AdaGNParams& p, void* workspace, cudaStream_t stream) {
  if (p.n == 0 || p.c == 0 || p.s == 0) return;
  const Split sp = choose_split(dtype, p);
  const int cp = p.channels_last ? channel_pack(dtype, p) : 1;
  dispatch_dtype(dtype, [&](auto tt) {
    using T = typename decltype(tt)::type;
    using A = acc_t<T>;
    constexpr int V = kVec<T>;
    A* part = static_cast<A*>(workspace);
    A* coef = part + part_elems(p, sp);
    const T* x = static_cast<const T*>(p.x);
    T* out = static_cast<T*>(p.out);
    const int64_t d = p.c / p.g, len = d * p.s;
    const auto capped = [](int64_t v) { return static_cast<unsigned>(v < 65535 ? v : 65535); };
    if (p.channels_last) {
      const dim3 grid(sp.split, static_cast<unsigned>(ceil_div(p.c, kClThreadsX * cp)), capped(p.n));
      const dim3 block(kClThreadsX, kClThreadsY);
      if (cp > 1) {
        adagn_stats_nsc_kernel<T, V><<<grid, block, 0, stream>>>(x, p.n, p.s, p.c, sp.chunk, part);
      } else {
        adagn_stats_nsc_kernel<T, 1><<<grid, block, 0, stream>>>(x, p.n, p.s, p.c, sp.chunk, part);
      }
    } else {
      const bool vec = aligned<T>(x, len) && aligned<T>(x, sp.chunk);
      if (vec) {
        adagn_stats_ncs_kernel<T, true><<<dim3(sp.split, capped(p.n * p.g)), kStatThreads, 0, stream>>>(
            x, p.n * p.g, len, sp.chunk, part);
      } else {
        adagn_stats_ncs_kernel<T, false><<<dim3(sp.split, capped(p.n * p.g)), kStatThreads, 0, stream>>>(
            x, p.n * p.g, len, sp.chunk, part);
      }
    }
    const auto fin = p.channels_last ? adagn_finalize_kernel<A, true> : adagn_finalize_kernel<A, false>;
    fin<<<static_cast<unsigned>(p.n * p.g), kStatThreads, 0, stream>>>(
        part, sp.split, static_cast<const A*>(p.gamma), static_cast<const A*>(p.beta),
        static_cast<const A*>(p.scale), static_cast<const A*>(p.shift), static_cast<A*>(p.mean),
        static_cast<A*>(p.rstd), coef, p.c, d, p.g, static_cast<A>(p.eps));
    const int64_t total = p.n * p.c * p.s;
    const bool vec = aligned<T>(x, p.channels_last ? p.c : p.s) && aligned<T>(out, 0);
    const int64_t packs = vec ? total / V : total;
    const int64_t blocks = ceil_div(packs, 256), most = 64LL * current_device_sms();
    const unsigned grid = static_cast<unsigned>(blocks < most ? blocks : most);
    if (p.channels_last) {
      if (vec) {
        adagn_apply_kernel<T, true, V><<<grid, 256, 0, stream>>>(x, out, coef, total, p.c, p.s, p.silu);
      } else {
        adagn_apply_kernel<T, true, 1><<<grid, 256, 0, stream>>>(x, out, coef, total, p.c, p.s, p.silu);
      }
    } else if (vec) {
      adagn_apply_kernel<T, false, V><<<grid, 256, 0, stream>>>(x, out, coef, total, p.c, p.s, p.silu);
    } else {
      adagn_apply_kernel<T, false, 1><<<grid, 256, 0, stream>>>(x, out, coef, total, p.c, p.s, p.silu);
    }
  });
}

}  // namespace cuda
}  // namespace fastdiff
