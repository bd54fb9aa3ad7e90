// TORCH_LIBRARY_IMPL(fastdiff, CUDA) for adaln_modulate (forward): the shared checks, then the launcher on the
// current stream, reading every argument in place through its row strides. The backward on CUDA runs in Triton
// (or, without Triton, the plain PyTorch formula): fastdiff/ops/adaln_modulate.py.
#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <tuple>

#include "adaln_modulate_launch.h"
#include "fastdiff/adaln_checks.h"
#include "torch_glue.h"

namespace fastdiff {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> adaln_modulate_cuda(
    const at::Tensor& x, const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& gate, bool rms, double eps) {
  const AdaLNArgs a = check_adaln(x, scale, shift, weight, bias, residual, gate, rms, eps);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::ScalarType acc = acc_type(x.scalar_type());
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  const bool gated = a.gate.defined();
  at::Tensor out = at::empty({a.b, a.l, a.d}, opts);
  at::Tensor h = gated ? at::empty({a.b, a.l, a.d}, opts) : at::empty({0}, opts);
  at::Tensor mean, rstd;
  if (a.d > 0) {
    mean = at::empty({a.b, a.l}, x.options().dtype(acc));
    rstd = at::empty({a.b, a.l}, x.options().dtype(acc));
  } else {  // nothing to normalise: the statistics of an empty row
    mean = at::zeros({a.b, a.l}, x.options().dtype(acc));
    rstd = at::full({a.b, a.l}, 1.0 / std::sqrt(eps), x.options().dtype(acc));
  }
  cuda::AdaLNParams p;
  auto rows = [](const RowView& v, const void*& ptr, int64_t& sb, int64_t& sl) {
    ptr = cuda::ptr_or_null(v.t);
    sb = v.sb;
    sl = v.sl;
  };
  rows(a.x, p.x, p.x_sb, p.x_sl);
  rows(a.residual, p.residual, p.r_sb, p.r_sl);
  rows(a.gate, p.gate, p.g_sb, p.g_sl);
  rows(a.scale, p.scale, p.s_sb, p.s_sl);
  rows(a.shift, p.shift, p.sh_sb, p.sh_sl);
  p.weight = cuda::ptr_or_null(a.weight);
  p.bias = cuda::ptr_or_null(a.bias);
  p.out = out.data_ptr();
  p.h = gated ? h.data_ptr() : nullptr;
  p.mean = mean.data_ptr();
  p.rstd = rstd.data_ptr();
  p.b = a.b;
  p.l = a.l;
  p.d = a.d;
  p.eps = eps;
  p.rms = rms;
  cuda::launch_adaln_modulate(cuda::dtype_of(x), p, cuda::current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, h, mean, rstd};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CUDA, m) { m.impl("adaln_modulate", &adaln_modulate_cuda); }

}  // namespace fastdiff
