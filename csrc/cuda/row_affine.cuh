// out = a_n·u + b_n·v over rows n of [N, M] tensors, with (a_n, b_n) from coefficient row t[n]: the shared loop
// of q_sample (DDPM eq. 4) and posterior_mean_variance (DDPM eq. 7); the formulas live in fastdiff/sampler_math.h.
#pragma once

#include "device.cuh"
#include "fastdiff/sampler_math.h"

namespace fastdiff {
namespace cuda {

// POSTERIOR: coefficients (coef1, coef2), and block x = 0 / thread 0 also writes var[n] = β̃_t, log_var[n] = log β̃_t.
template <typename T, typename R, int V, bool POSTERIOR>
__global__ void row_affine_kernel(Rows rows, TableArgs table, const T* u, const T* v, T* out, acc_t<T>* var,
                                  acc_t<T>* log_var) {
  using A = acc_t<T>;
  const int64_t m = rows.m, vecs = m / V;
  for (int64_t n = blockIdx.y; n < rows.n; n += gridDim.y) {
    R row[coef::NCOEF];
    load_row(static_cast<const R*>(table.coefs), table.table_len, table.t[n], row);
    const Affine2<A> c = POSTERIOR ? posterior_coefs<A>(row) : q_sample_coefs<A>(row);
    if (POSTERIOR && blockIdx.x == 0 && threadIdx.x == 0) {
      var[n] = static_cast<A>(row[coef::POST_VAR]);
      log_var[n] = static_cast<A>(row[coef::POST_LOGVAR]);
    }
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < vecs;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t i = n * m + j * V;
      const Pack<T, V> uv = load<T, V>(u + i), vv = load<T, V>(v + i);
      Pack<T, V> res;
#pragma unroll
      for (int k = 0; k < V; ++k) res.v[k] = from_acc<T>(affine2(c, to_acc(uv.v[k]), to_acc(vv.v[k])));
      store<T, V>(out + i, res);
    }
  }
}

template <bool POSTERIOR>
void launch_row_affine(DType dtype, Rows rows, TableArgs table, const void* u, const void* v, void* out, void* var,
                       void* log_var, cudaStream_t stream) {
  if (rows.n == 0) return;
  dispatch_dtypes(dtype, table.coefs_dtype, [&](auto tt, auto rt) {
    using T = typename decltype(tt)::type;
    using R = typename decltype(rt)::type;
    using A = acc_t<T>;
    constexpr int V = 16 / sizeof(T);
    const T *up = static_cast<const T*>(u), *vp = static_cast<const T*>(v);
    T* op = static_cast<T*>(out);
    A *varp = static_cast<A*>(var), *lvp = static_cast<A*>(log_var);
    if (rows.m % V == 0 && aligned16(u) && aligned16(v) && aligned16(out)) {
      const RowLaunch l = row_launch(rows.n, rows.m / V);
      row_affine_kernel<T, R, V, POSTERIOR><<<l.grid, l.threads, 0, stream>>>(rows, table, up, vp, op, varp, lvp);
    } else {
      const RowLaunch l = row_launch(rows.n, rows.m);
      row_affine_kernel<T, R, 1, POSTERIOR><<<l.grid, l.threads, 0, stream>>>(rows, table, up, vp, op, varp, lvp);
    }
  });
}

}  // namespace cuda
}  // namespace fastdiff
