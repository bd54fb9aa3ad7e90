// adaLN modulate forward (DiT §3.2, adaLN-Zero): h = residual + gate·x (gated form), out = (norm(h)·w + b)·
// (1 + scale) + shift with norm LayerNorm or RMSNorm over the last dimension D; math in fastdiff/adaln.h (the CPU
// kernel's too). The backward on CUDA runs in Triton (fastdiff/ops/adaln_modulate.py).
//
// Memory-bound by design: each row is read once (x, and residual + gate in the gated form) into registers, its
// statistics reduced from the registers (two passes, mean then Σ(h − mean)², no cancellation), and out (and h)
// written once, with 16-byte accesses where D, every pointer and every row stride allow. A row is one warp
// (blocks of kWarpRows rows) when it fits in 32 threads, else one block of up to 512 threads; each thread holds
// VPT ∈ {1, 2, 4} 16-byte vectors of it (8-32 values per thread in fp16/bf16, enough bytes in flight to stream
// HBM). Rows longer than 512·4 vectors (16384 values in fp16/bf16, 8192 in fp32) fall back to a loop kernel
// that reads the row three times (from L1/L2).
// Per-sample scale / shift / gate rows (token stride 0) are re-read per token from L1/L2, not from HBM.
// To be measured on a GPU: the share of copy bandwidth at DiT-XL's [2, 256, 1152] and Flux's [1, 4096, 3072]
// (the target is >= 80%), and whether short rows (D < 32·V) want several rows per warp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "adaln_modulate_launch.h"
#include "device.cuh"
#include "fastdiff/adaln.h"

namespace fastdiff {
namespace cuda {
namespace {

constexpr int kMaxRowThreads = 512;  // __launch_bounds__: 128 registers a thread, room for VPT·V = 32 values
constexpr int kMaxVecsPerThread = 4;
constexpr int kWarpRows = 4;      // rows per block when a row is one warp
constexpr int kLoopThreads = 512;  // the long-row fallback

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Σ v over the blockDim.x threads of this row (row threadIdx.y), returned to all of them. A row of one warp
// reduces by shuffles; a row of several warps (then blockDim.y == 1) also through shared memory.
template <typename A>
__device__ __forceinline__ A row_sum(A v) {
  __shared__ A red[32];
  v = warp_sum(v);
  if (blockDim.x == 32) return v;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // the previous call's readers are done with red
  if (lane == 0) red[warp] = v;
  __syncthreads();
  return warp_sum(lane < static_cast<int>(blockDim.x / 32) ? red[lane] : A(0));
}

template <typename T>
__device__ __forceinline__ const T* row_of(const void* base, int64_t sb, int64_t sl, int64_t b, int64_t l) {
  return static_cast<const T*>(base) + b * sb + l * sl;
}

// V values of an optional argument at column j as A, or `fill` when it is absent.
template <typename T, int V>
__device__ __forceinline__ void load_or(const T* p, int64_t j, acc_t<T> fill, acc_t<T> (&v)[V]) {
  if (p != nullptr) {
    const Pack<T, V> pk = load<T, V>(p + j);
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = to_acc(pk.v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = fill;
  }
}

template <typename T, int V, int VPT>
__global__ void __launch_bounds__(kMaxRowThreads) adaln_fwd_kernel(const AdaLNParams p) {
  using A = acc_t<T>;
  const int64_t rows = p.b * p.l, d = p.d;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row < rows;  // inactive rows still take part in the block's reductions
  const int64_t bi = active ? row / p.l : 0, li = active ? row % p.l : 0;
  const T* x = row_of<T>(p.x, p.x_sb, p.x_sl, bi, li);
  const bool gated = p.gate != nullptr;
  const T* res = gated ? row_of<T>(p.residual, p.r_sb, p.r_sl, bi, li) : nullptr;
  const T* gate = gated ? row_of<T>(p.gate, p.g_sb, p.g_sl, bi, li) : nullptr;
  T* hout = gated ? static_cast<T*>(p.h) + row * d : nullptr;
  A h[VPT][V];
  A sum = A(0);
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int64_t j = (static_cast<int64_t>(k) * blockDim.x + threadIdx.x) * V;
    if (active && j < d) {
      const Pack<T, V> xv = load<T, V>(x + j);
      if (gated) {
        const Pack<T, V> rv = load<T, V>(res + j), gv = load<T, V>(gate + j);
        Pack<T, V> hv;
#pragma unroll
        for (int i = 0; i < V; ++i) {
          hv.v[i] = from_acc<T>(ln::gated(to_acc(rv.v[i]), to_acc(gv.v[i]), to_acc(xv.v[i])));
          h[k][i] = to_acc(hv.v[i]);  // the stored (rounded) h is what is normalised, as in the reference
        }
        store<T, V>(hout + j, hv);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) h[k][i] = to_acc(xv.v[i]);
      }
#pragma unroll
      for (int i = 0; i < V; ++i) sum += h[k][i];
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) h[k][i] = A(0);
    }
  }
  const A count = static_cast<A>(d);
  const A mean = p.rms ? A(0) : row_sum(sum) / count;
  A q = A(0);
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int64_t j = (static_cast<int64_t>(k) * blockDim.x + threadIdx.x) * V;
    if (active && j < d) {
#pragma unroll
      for (int i = 0; i < V; ++i) q += (h[k][i] - mean) * (h[k][i] - mean);
    }
  }
  const A rstd = ln::rstd(row_sum(q), count, static_cast<A>(p.eps));
  if (!active) return;
  if (threadIdx.x == 0) {
    static_cast<A*>(p.mean)[row] = mean;
    static_cast<A*>(p.rstd)[row] = rstd;
  }
  const T* w = static_cast<const T*>(p.weight);
  const T* bb = static_cast<const T*>(p.bias);
  const T* sc = p.scale != nullptr ? row_of<T>(p.scale, p.s_sb, p.s_sl, bi, li) : nullptr;
  const T* sh = p.shift != nullptr ? row_of<T>(p.shift, p.sh_sb, p.sh_sl, bi, li) : nullptr;
  T* out = static_cast<T*>(p.out) + row * d;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int64_t j = (static_cast<int64_t>(k) * blockDim.x + threadIdx.x) * V;
    if (j < d) {
      A wv[V], bv[V], sv[V], shv[V];
      load_or<T, V>(w, j, A(1), wv);
      load_or<T, V>(bb, j, A(0), bv);
      load_or<T, V>(sc, j, A(0), sv);
      load_or<T, V>(sh, j, A(0), shv);
      Pack<T, V> o;
#pragma unroll
      for (int i = 0; i < V; ++i) o.v[i] = from_acc<T>(ln::modulate(h[k][i], mean, rstd, wv[i], bv[i], sv[i], shv[i]));
      store<T, V>(out + j, o);
    }
  }
}

// Rows too long for registers: one block per row, three passes over it (h, and the gated h written in the first;
// each thread re-reads only the columns it wrote, so no block-wide fence is needed between the passes).
template <typename T>
__global__ void __launch_bounds__(kLoopThreads) adaln_fwd_loop_kernel(const AdaLNParams p) {
  using A = acc_t<T>;
  const int64_t row = blockIdx.x, d = p.d;
  const int64_t bi = row / p.l, li = row % p.l;
  const T* x = row_of<T>(p.x, p.x_sb, p.x_sl, bi, li);
  const bool gated = p.gate != nullptr;
  const T* res = gated ? row_of<T>(p.residual, p.r_sb, p.r_sl, bi, li) : nullptr;
  const T* gate = gated ? row_of<T>(p.gate, p.g_sb, p.g_sl, bi, li) : nullptr;
  T* hout = gated ? static_cast<T*>(p.h) + row * d : nullptr;
  const T* src = gated ? hout : x;
  A sum = A(0);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    A v = to_acc(x[j]);
    if (gated) {
      const T hv = from_acc<T>(ln::gated(to_acc(res[j]), to_acc(gate[j]), v));
      hout[j] = hv;
      v = to_acc(hv);
    }
    sum += v;
  }
  const A count = static_cast<A>(d);
  const A mean = p.rms ? A(0) : row_sum(sum) / count;
  A q = A(0);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const A c = to_acc(src[j]) - mean;
    q += c * c;
  }
  const A rstd = ln::rstd(row_sum(q), count, static_cast<A>(p.eps));
  if (threadIdx.x == 0) {
    static_cast<A*>(p.mean)[row] = mean;
    static_cast<A*>(p.rstd)[row] = rstd;
  }
  const T* w = static_cast<const T*>(p.weight);
  const T* bb = static_cast<const T*>(p.bias);
  const T* sc = p.scale != nullptr ? row_of<T>(p.scale, p.s_sb, p.s_sl, bi, li) : nullptr;
  const T* sh = p.shift != nullptr ? row_of<T>(p.shift, p.sh_sb, p.sh_sl, bi, li) : nullptr;
  T* out = static_cast<T*>(p.out) + row * d;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const A z = ln::modulate(to_acc(src[j]), mean, rstd, w != nullptr ? to_acc(w[j]) : A(1),
                             bb != nullptr ? to_acc(bb[j]) : A(0), sc != nullptr ? to_acc(sc[j]) : A(0),
                             sh != nullptr ? to_acc(sh[j]) : A(0));
    out[j] = from_acc<T>(z);
  }
}

// Whether every access can be a V-element pack: D a multiple of V, every pointer 16-byte aligned, every row stride
// a multiple of V.
bool vectorisable(const AdaLNParams& p, int v) {
  const void* ptrs[] = {p.x, p.residual, p.gate, p.scale, p.shift, p.weight, p.bias, p.out, p.h};
  for (const void* q : ptrs)
    if (!aligned16(q)) return false;
  const int64_t strides[] = {p.d, p.x_sb, p.x_sl, p.r_sb, p.r_sl, p.g_sb, p.g_sl, p.s_sb, p.s_sl, p.sh_sb, p.sh_sl};
  for (int64_t s : strides)
    if (s % v != 0) return false;
  return true;
}

template <typename T, int V>
void launch_v(const AdaLNParams& p, cudaStream_t stream) {
  const int64_t rows = p.b * p.l;
  const int64_t vecs = (p.d + V - 1) / V;
  if (vecs > static_cast<int64_t>(kMaxRowThreads) * kMaxVecsPerThread) {
    adaln_fwd_loop_kernel<T><<<static_cast<unsigned>(rows), kLoopThreads, 0, stream>>>(p);
    return;
  }
  const int vpt = vecs >= 512 ? 4 : (vecs >= 64 ? 2 : 1);
  const int64_t per_thread = (vecs + vpt - 1) / vpt;
  const int threads = static_cast<int>((per_thread + 31) / 32 * 32);
  const int rows_per_block = threads == 32 ? kWarpRows : 1;
  const dim3 block(threads, rows_per_block);
  const unsigned grid = static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block);
  switch (vpt) {
    case 1: adaln_fwd_kernel<T, V, 1><<<grid, block, 0, stream>>>(p); break;
    case 2: adaln_fwd_kernel<T, V, 2><<<grid, block, 0, stream>>>(p); break;
    default: adaln_fwd_kernel<T, V, 4><<<grid, block, 0, stream>>>(p); break;
  }
}

}  // namespace

void launch_adaln_modulate(DType dtype, const AdaLNParams& p, cudaStream_t stream) {
  if (p.b * p.l == 0 || p.d == 0) return;
  dispatch_dtype(dtype, [&](auto tt) {
    using T = typename decltype(tt)::type;
    constexpr int V = 16 / sizeof(T);
    if (vectorisable(p, V)) {
      launch_v<T, V>(p, stream);
    } else {
      launch_v<T, 1>(p, stream);
    }
  });
}

}  // namespace cuda
}  // namespace fastdiff
