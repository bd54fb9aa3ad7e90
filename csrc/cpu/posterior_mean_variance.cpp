// Posterior q(x_{t-1} | x_t, x_0) mean and variance on CPU (DDPM eqs. 6-7); math in fastdiff/sampler_math.h.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <tuple>

#include "cpu_loop.h"
#include "fastdiff/checks.h"
#include "fastdiff/sampler_math.h"

namespace fastdiff {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> posterior_mean_variance_cpu(const at::Tensor& x_start,
                                                                           const at::Tensor& x_t,
                                                                           const at::Tensor& coefs,
                                                                           const at::Tensor& t) {
  const PairArgs p = check_pair("x_start", x_start, "x_t", x_t, coefs, t);
  at::Tensor mean = at::empty_like(p.a);
  // β̃_t and log β̃_t: a gather of two table columns, in the accumulation dtype.
  const auto acc = acc_type(p.a.scalar_type());
  at::Tensor var = p.coefs.index_select(0, p.t).select(1, coef::POST_VAR).to(acc).contiguous();
  at::Tensor log_var = p.coefs.index_select(0, p.t).select(1, coef::POST_LOGVAR).to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.a.scalar_type(), "posterior_mean_variance_cpu", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const auto cs = cpu::per_sample<Affine2<A>>(p.coefs, p.t, [](const auto* row, int64_t) {
      return posterior_coefs<A>(row);
    });
    const T* x0 = p.a.data_ptr<T>();
    const T* xt = p.b.data_ptr<T>();
    T* y = mean.data_ptr<T>();
    const int64_t m = p.m;
    cpu::for_each_row_chunk(p.n, m, [&](int64_t n, int64_t b, int64_t e) {
      const Affine2<A> c = cs[n];
      const int64_t len = e - b, base = n * m + b;
      A ub[cpu::kBuf<A, T>], vb[cpu::kBuf<A, T>], yb[cpu::kBuf<A, T>];
      const A* u = cpu::load(x0 + base, ub, len);
      const A* v = cpu::load(xt + base, vb, len);
      A* r = cpu::out_buf(y + base, yb);
      for (int64_t j = 0; j < len; ++j) r[j] = affine2(c, u[j], v[j]);
      cpu::store(r, y + base, len);
    });
  });
  return {mean, var, log_var};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) { m.impl("posterior_mean_variance", &posterior_mean_variance_cpu); }

}  // namespace fastdiff
