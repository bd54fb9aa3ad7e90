// TORCH_LIBRARY_IMPL(fastdiff, CUDA) for q_sample: the shared checks, then the launcher on the current stream.
#include <torch/library.h>

#include "torch_glue.h"

namespace fastdiff {
namespace {

at::Tensor q_sample_cuda(const at::Tensor& x_start, const at::Tensor& noise, const at::Tensor& coefs,
                         const at::Tensor& t) {
  const PairArgs p = check_pair("x_start", x_start, "noise", noise, coefs, t);
  const c10::cuda::CUDAGuard guard(p.a.device());
  at::Tensor out = at::empty_like(p.a);
  cuda::launch_q_sample(cuda::dtype_of(p.a), {p.n, p.m}, cuda::table_args(p.coefs, p.t), p.a.data_ptr(),
                        p.b.data_ptr(), out.data_ptr(), cuda::current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CUDA, m) { m.impl("q_sample", &q_sample_cuda); }

}  // namespace fastdiff
