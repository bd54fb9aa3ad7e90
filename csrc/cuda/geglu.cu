// GEGLU forward and backward (Shazeer 2020, eq. 5; fastdiff/ops/geglu.py): out = h·GELU(g) with (h, g) the two
// halves of each row of x, math in fastdiff/gelu.h (the CPU kernel's too). Memory-bound elementwise kernels:
// each thread moves V = 16 / sizeof(T) consecutive values of h, g (and dy) per 16-byte access when F, the row
// stride and every pointer allow it, else one value. The grid strides over the flattened (row, vector) index, so
// short rows (small models' F) still fill every lane; the row / column split is a 32-bit division whenever the
// index fits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "device.cuh"
#include "fastdiff/gelu.h"
#include "geglu_launch.h"

namespace fastdiff {
namespace cuda {
namespace {

template <typename T, int V, bool TANH, typename I>
__global__ void geglu_kernel(const T* __restrict__ x, T* __restrict__ out, I total, I vecs, int64_t f,
                             int64_t rs) {
  using A = acc_t<T>;
  for (I i = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    const I row = i / vecs, col = (i - row * vecs) * V;
    const T* xr = x + static_cast<int64_t>(row) * rs + col;
    const Pack<T, V> h = load<T, V>(xr), g = load<T, V>(xr + f);
    Pack<T, V> o;
#pragma unroll
    for (int k = 0; k < V; ++k) o.v[k] = from_acc<T>(gelu::geglu<A, TANH>(to_acc(h.v[k]), to_acc(g.v[k])));
    store<T, V>(out + static_cast<int64_t>(row) * f + col, o);
  }
}

template <typename T, int V, bool TANH, typename I>
__global__ void geglu_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                                      I total, I vecs, int64_t f, int64_t rs) {
  using A = acc_t<T>;
  for (I i = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    const I row = i / vecs, col = (i - row * vecs) * V;
    const T* xr = x + static_cast<int64_t>(row) * rs + col;
    const Pack<T, V> h = load<T, V>(xr), g = load<T, V>(xr + f);
    const Pack<T, V> d = load<T, V>(dy + static_cast<int64_t>(row) * f + col);
    Pack<T, V> dh, dg;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const gelu::GegluGrads<A> gr = gelu::geglu_grads<A, TANH>(to_acc(d.v[k]), to_acc(h.v[k]), to_acc(g.v[k]));
      dh.v[k] = from_acc<T>(gr.h);
      dg.v[k] = from_acc<T>(gr.g);
    }
    T* dr = dx + static_cast<int64_t>(row) * 2 * f + col;
    store<T, V>(dr, dh);
    store<T, V>(dr + f, dg);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// launch(std::integral_constant<int, V>, std::bool_constant<TANH>, index type tag, total, vecs, grid, threads).
template <typename T, typename F>
void dispatch(const GegluParams& p, bool vec, const F& launch) {
  auto with_v = [&](auto v) {
    constexpr int V = decltype(v)::value;
    const int64_t vecs = p.f / V, total = p.rows * vecs;
    const int threads = kThreads;
    const int64_t blocks = std::min<int64_t>(std::max<int64_t>(ceil_div(total, threads), 1), int64_t(1) << 20);
    auto with_tanh = [&](auto t) {
      if (total < (int64_t(1) << 31)) {
        launch(v, t, Tag<uint32_t>{}, total, vecs, static_cast<unsigned>(blocks), threads);
      } else {
        launch(v, t, Tag<int64_t>{}, total, vecs, static_cast<unsigned>(blocks), threads);
      }
    };
    if (p.tanh) {
      with_tanh(std::true_type{});
    } else {
      with_tanh(std::false_type{});
    }
  };
  if (vec) {
    with_v(std::integral_constant<int, 16 / sizeof(T)>{});
  } else {
    with_v(std::integral_constant<int, 1>{});
  }
}

template <typename T>
bool vectorisable(const GegluParams& p) {
  constexpr int V = 16 / sizeof(T);
  return p.f % V == 0 && p.x_row_stride % V == 0 && aligned16(p.x) && aligned16(p.dy) && aligned16(p.out);
}

}  // namespace

void launch_geglu(DType dtype, const GegluParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.f == 0) return;
  dispatch_dtype(dtype, [&](auto tt) {
    using T = typename decltype(tt)::type;
    dispatch<T>(p, vectorisable<T>(p), [&](auto v, auto tanh, auto it, int64_t total, int64_t vecs, unsigned blocks,
                                           int threads) {
      using I = typename decltype(it)::type;
      geglu_kernel<T, decltype(v)::value, decltype(tanh)::value, I><<<blocks, threads, 0, stream>>>(
          static_cast<const T*>(p.x), static_cast<T*>(p.out), static_cast<I>(total), static_cast<I>(vecs), p.f,
          p.x_row_stride);
    });
  });
}

void launch_geglu_backward(DType dtype, const GegluParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.f == 0) return;
  dispatch_dtype(dtype, [&](auto tt) {
    using T = typename decltype(tt)::type;
    dispatch<T>(p, vectorisable<T>(p), [&](auto v, auto tanh, auto it, int64_t total, int64_t vecs, unsigned blocks,
                                           int threads) {
      using I = typename decltype(it)::type;
      geglu_backward_kernel<T, decltype(v)::value, decltype(tanh)::value, I><<<blocks, threads, 0, stream>>>(
          static_cast<const T*>(p.dy), static_cast<const T*>(p.x), static_cast<T*>(p.out), static_cast<I>(total),
          static_cast<I>(vecs), p.f, p.x_row_stride);
    });
  });
}

}  // namespace cuda
}  // namespace fastdiff
