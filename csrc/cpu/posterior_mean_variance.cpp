// Posterior q(x_{t-1} | x_t, x_0) mean and variance on CPU (DDPM eqs. 6-7); math in fastdiff/sampler_math.h.
#include <torch/library.h>

#include <tuple>

#include "row_affine.h"

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
  cpu::row_affine(p, mean, [](auto a, const auto* row) { return posterior_coefs<decltype(a)>(row); });
  return {mean, var, log_var};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) { m.impl("posterior_mean_variance", &posterior_mean_variance_cpu); }

}  // namespace fastdiff
