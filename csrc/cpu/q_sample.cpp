// Forward-process sample q(x_t | x_0) on CPU (DDPM eq. 4); math in fastdiff/sampler_math.h.
#include <torch/library.h>

#include "row_affine.h"

namespace fastdiff {
namespace {

at::Tensor q_sample_cpu(const at::Tensor& x_start, const at::Tensor& noise, const at::Tensor& coefs,
                        const at::Tensor& t) {
  const PairArgs p = check_pair("x_start", x_start, "noise", noise, coefs, t);
  at::Tensor out = at::empty_like(p.a);
  cpu::row_affine(p, out, [](auto a, const auto* row) { return q_sample_coefs<decltype(a)>(row); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) { m.impl("q_sample", &q_sample_cpu); }

}  // namespace fastdiff
