// Forward-process sample q(x_t | x_0) on CPU (DDPM eq. 4); math in fastdiff/sampler_math.h.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "cpu_loop.h"
#include "fastdiff/checks.h"
#include "fastdiff/sampler_math.h"

namespace fastdiff {
namespace {

at::Tensor q_sample_cpu(const at::Tensor& x_start, const at::Tensor& noise, const at::Tensor& coefs,
                        const at::Tensor& t) {
  const PairArgs p = check_pair("x_start", x_start, "noise", noise, coefs, t);
  at::Tensor out = at::empty_like(p.a);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.a.scalar_type(), "q_sample_cpu", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const auto cs = cpu::per_sample<Affine2<A>>(p.coefs, p.t, [](const auto* row, int64_t) {
      return q_sample_coefs<A>(row);
    });
    const T* x0 = p.a.data_ptr<T>();
    const T* eps = p.b.data_ptr<T>();
    T* y = out.data_ptr<T>();
    const int64_t m = p.m;
    cpu::for_each_row_chunk(p.n, m, [&](int64_t n, int64_t b, int64_t e) {
      const Affine2<A> c = cs[n];
      const int64_t len = e - b, base = n * m + b;
      A ub[cpu::kBuf<A, T>], vb[cpu::kBuf<A, T>], yb[cpu::kBuf<A, T>];
      const A* u = cpu::load(x0 + base, ub, len);
      const A* v = cpu::load(eps + base, vb, len);
      A* r = cpu::out_buf(y + base, yb);
      for (int64_t j = 0; j < len; ++j) r[j] = affine2(c, u[j], v[j]);
      cpu::store(r, y + base, len);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) { m.impl("q_sample", &q_sample_cpu); }

}  // namespace fastdiff
