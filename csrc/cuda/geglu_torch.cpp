// TORCH_LIBRARY_IMPL(fastdiff, CUDA) for geglu and geglu_backward: the shared checks (x read in place as rows
// with one row stride, else copied once), then the launchers on the current stream (csrc/cuda/geglu.cu).
#include <torch/library.h>

#include <ATen/ops/empty.h>

#include "fastdiff/geglu_checks.h"
#include "geglu_launch.h"
#include "torch_glue.h"

namespace fastdiff {
namespace {

cuda::GegluParams params(const GegluArgs& a, void* out) {
  cuda::GegluParams p;
  p.x = a.x.defined() ? a.x.data_ptr() : nullptr;
  p.out = out;
  p.rows = a.rows;
  p.f = a.f;
  p.x_row_stride = a.row_stride;
  p.tanh = a.tanh;
  return p;
}

at::Tensor geglu_cuda(const at::Tensor& x, c10::string_view approximate) {
  const GegluArgs a = check_geglu(x, approximate);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(a.out_sizes, x.options());
  if (a.rows == 0 || a.f == 0) return out;
  cuda::launch_geglu(cuda::dtype_of(x), params(a, out.data_ptr()), cuda::current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor geglu_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, c10::string_view approximate) {
  const GegluArgs a = check_geglu(x, approximate);
  const at::Tensor dy = check_geglu_grad(grad_out, x, a);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx = at::empty(x.sizes(), x.options());
  if (a.rows == 0 || a.f == 0) return dx;
  cuda::GegluParams p = params(a, dx.data_ptr());
  p.dy = dy.data_ptr();
  cuda::launch_geglu_backward(cuda::dtype_of(x), p, cuda::current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CUDA, m) {
  m.impl("geglu", &geglu_cuda);
  m.impl("geglu_backward", &geglu_backward_cuda);
}

}  // namespace fastdiff
