// out[n, i] = a_n·u[n, i] + b_n·v[n, i], with (a_n, b_n) from row t[n] of the coefficient table: the one CPU loop
// behind q_sample (DDPM eq. 4) and the posterior mean (DDPM eq. 7). Mirrors csrc/cuda/row_affine.cuh.
#pragma once

#include <ATen/OpMathType.h>

#include "cpu_loop.h"
#include "fastdiff/checks.h"
#include "fastdiff/sampler_math.h"

namespace fastdiff {
namespace cpu {

// make(A{}, row) -> Affine2<A> for a table row; out: contiguous, shaped like p.a.
template <typename Make>
void row_affine(const PairArgs& p, at::Tensor& out, const Make& make) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.a.scalar_type(), "fastdiff_row_affine_cpu", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const auto cs = per_sample<Affine2<A>>(p.coefs, p.t, [&](const auto* row, int64_t) { return make(A{}, row); });
    const T* up = p.a.data_ptr<T>();
    const T* vp = p.b.data_ptr<T>();
    T* y = out.data_ptr<T>();
    const int64_t m = p.m;
    for_each_row_chunk(p.n, m, [&](int64_t n, int64_t b, int64_t e) {
      const Affine2<A> c = cs[n];
      const int64_t len = e - b, base = n * m + b;
      A ub[kBuf<A, T>], vb[kBuf<A, T>], yb[kBuf<A, T>];
      const A* u = load(up + base, ub, len);
      const A* v = load(vp + base, vb, len);
      A* r = out_buf(y + base, yb);
      for (int64_t j = 0; j < len; ++j) r[j] = affine2(c, u[j], v[j]);
      store(r, y + base, len);
    });
  });
}

}  // namespace cpu
}  // namespace fastdiff
