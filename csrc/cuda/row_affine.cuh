// out = a_n·u + b_n·v over rows n of [N, M] tensors, with (a_n, b_n) from coefficient row t[n]: the shared loop
// of q_sample (DDPM eq. 4) and posterior_mean_variance (DDPM eq. 7); the formulas live in fastdiff/sampler_math.h.
#pragma once

#include "device.cuh"
#include "fastdiff/flat_packs.h"
#include "fastdiff/sampler_math.h"

namespace fastdiff {
namespace cuda {

// Packs of V elements of the flat tensor, grid-strided (fastdiff/flat_packs.h); a pack that crosses a row end goes
// element by element. POSTERIOR: coefficients (coef1, coef2), and the threads also stride over the rows to write
// var[n] = β̃_t, log_var[n] = log β̃_t (rows of M = 0 values too: a launch has at least one block).
template <typename T, typename R, int V, bool POSTERIOR>
__global__ void row_affine_kernel(Rows rows, RowDivider div, TableArgs table, const T* u, const T* v, T* out,
                                  acc_t<T>* var, acc_t<T>* log_var) {
  using A = acc_t<T>;
  const R* coefs = static_cast<const R*>(table.coefs);
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if (POSTERIOR) {
    for (int64_t n = first; n < rows.n; n += stride) {
      R row[coef::NCOEF];
      load_row(coefs, table.table_len, table.t[n], row);
      var[n] = static_cast<A>(row[coef::POST_VAR]);
      log_var[n] = static_cast<A>(row[coef::POST_LOGVAR]);
    }
  }
  int64_t row_n = -1;
  Affine2<A> c;
  auto affine_pack = [&](auto width, int64_t i, int64_t n, int64_t) {
    constexpr int W = decltype(width)::value;
    if (n != row_n) {
      row_n = n;
      R row[coef::NCOEF];
      load_row(coefs, table.table_len, table.t[n], row);
      c = POSTERIOR ? posterior_coefs<A>(row) : q_sample_coefs<A>(row);
    }
    const Pack<T, W> uv = load<T, W>(u + i), vv = load<T, W>(v + i);
    Pack<T, W> res;
#pragma unroll
    for (int k = 0; k < W; ++k) res.v[k] = from_acc<T>(affine2(c, to_acc(uv.v[k]), to_acc(vv.v[k])));
    store<T, W>(out + i, res);
  };
  for_each_pack<V, (V > 1)>(first, stride, rows.n * rows.m, div, affine_pack);
}

template <bool POSTERIOR>
void launch_row_affine(DType dtype, Rows rows, TableArgs table, const void* u, const void* v, void* out, void* var,
                       void* log_var, cudaStream_t stream) {
  if (rows.n == 0) return;
  const int64_t total = rows.n * rows.m;
  const RowDivider div(rows.m, total);
  dispatch_dtypes(dtype, table.coefs_dtype, [&](auto tt, auto rt) {
    using T = typename decltype(tt)::type;
    using R = typename decltype(rt)::type;
    using A = acc_t<T>;
    const T *up = static_cast<const T*>(u), *vp = static_cast<const T*>(v);
    T* op = static_cast<T*>(out);
    A *varp = static_cast<A*>(var), *lvp = static_cast<A*>(log_var);
    launch_packs<T>(total, aligned16(u) && aligned16(v) && aligned16(out), [&](auto w, FlatLaunch l) {
      row_affine_kernel<T, R, decltype(w)::value, POSTERIOR><<<l.blocks, l.threads, 0, stream>>>(rows, div, table, up,
                                                                                               vp, op, varp, lvp);
    });
  });
}

}  // namespace cuda
}  // namespace fastdiff
