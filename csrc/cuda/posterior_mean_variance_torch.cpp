// TORCH_LIBRARY_IMPL(fastdiff, CUDA) for posterior_mean_variance: the shared checks, then the launcher on the
// current stream (the kernel also writes the [N] variance outputs, so there is no extra gather launch).
#include <torch/library.h>

#include <tuple>

#include "torch_glue.h"

namespace fastdiff {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> posterior_mean_variance_cuda(const at::Tensor& x_start,
                                                                            const at::Tensor& x_t,
                                                                            const at::Tensor& coefs,
                                                                            const at::Tensor& t) {
  const PairArgs p = check_pair("x_start", x_start, "x_t", x_t, coefs, t);
  const c10::cuda::CUDAGuard guard(p.a.device());
  at::Tensor mean = at::empty_like(p.a);
  const auto acc = p.a.options().dtype(acc_type(p.a.scalar_type()));
  at::Tensor var = at::empty({p.n}, acc), log_var = at::empty({p.n}, acc);
  cuda::launch_posterior_mean_variance(cuda::dtype_of(p.a), {p.n, p.m}, cuda::table_args(p.coefs, p.t),
                                       p.a.data_ptr(), p.b.data_ptr(), mean.data_ptr(), var.data_ptr(),
                                       log_var.data_ptr(), cuda::current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {mean, var, log_var};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CUDA, m) { m.impl("posterior_mean_variance", &posterior_mean_variance_cuda); }

}  // namespace fastdiff
