// TORCH_LIBRARY_IMPL(fastdiff, CUDA) for adagn (forward): the shared checks, a workspace for the split statistics,
// then the launcher on the current stream; x is read in place in its layout ([N, C, S] or channels-last [N, S, C])
// and the output keeps it. The backward on CUDA runs in Triton (fastdiff/ops/adagn.py).
#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>

#include <tuple>

#include "adagn_launch.h"
#include "fastdiff/adagn_checks.h"
#include "torch_glue.h"

namespace fastdiff {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> adagn_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                          const at::Tensor& bias,
                                                          const c10::optional<at::Tensor>& scale,
                                                          const c10::optional<at::Tensor>& shift, int64_t num_groups,
                                                          double eps, bool silu) {
  const AdaGNArgs a = check_adagn(x, weight, bias, scale, shift, num_groups, eps);
  const c10::cuda::CUDAGuard guard(a.x.device());
  const at::ScalarType acc = acc_type(x.scalar_type());
  at::Tensor out = adagn_empty_like_x(a, x.scalar_type());  // x's memory format
  at::Tensor mean = at::zeros({a.n, a.g}, x.options().dtype(acc));
  at::Tensor rstd = at::full({a.n, a.g}, 1.0 / std::sqrt(eps), x.options().dtype(acc));
  cuda::AdaGNParams p;
  p.x = a.x.data_ptr();
  p.out = out.data_ptr();
  p.gamma = a.gamma.data_ptr();
  p.beta = a.beta.data_ptr();
  p.scale = cuda::ptr_or_null(a.scale);
  p.shift = cuda::ptr_or_null(a.shift);
  p.mean = mean.data_ptr();
  p.rstd = rstd.data_ptr();
  p.n = a.n;
  p.c = a.c;
  p.g = a.g;
  p.s = a.s;
  p.eps = eps;
  p.silu = silu;
  p.channels_last = a.channels_last;
  const cuda::DType dtype = cuda::dtype_of(a.x);
  at::Tensor workspace = at::empty({std::max<int64_t>(cuda::adagn_workspace_bytes(dtype, p), 1)},
                                   x.options().dtype(at::kByte));
  cuda::launch_adagn(dtype, p, workspace.data_ptr(), cuda::current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, mean, rstd};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CUDA, m) { m.impl("adagn", &adagn_cuda); }

}  // namespace fastdiff
