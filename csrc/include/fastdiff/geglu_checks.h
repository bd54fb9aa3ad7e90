// Argument checks of the geglu ops shared by the CPU (csrc/cpu/geglu.cpp) and CUDA (csrc/cuda/geglu_torch.cpp)
// registrations, mirroring fastdiff/ops/geglu.py. Includes torch; never include it from a .cu file.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <vector>

#include "fastdiff/checks.h"

namespace fastdiff {

// x: [..., 2F] read as R rows of 2F values (value half, then gate half) with unit element stride and one row stride
// (a view whose leading dims collapse is read in place, anything else copied once); the output is [..., F].
struct GegluArgs {
  at::Tensor x;                    // rows of 2F values, x.stride(-1) == 1 (undefined when R·F = 0)
  int64_t rows = 0, f = 0, row_stride = 0;
  std::vector<int64_t> out_sizes;  // x's shape with the last dim halved
  bool tanh = false;               // approximate="tanh" (else "none": erf)
};

inline bool geglu_tanh(c10::string_view approximate) {
  TORCH_CHECK(approximate == "none" || approximate == "tanh", "approximate must be 'none' or 'tanh', got '",
              approximate, "'");
  return approximate == "tanh";
}

inline GegluArgs check_geglu(const at::Tensor& x, c10::string_view approximate) {
  check_float("x", x);
  TORCH_CHECK(x.dim() >= 1, "x must be [..., 2F] (value and gate halves in the last dim), got a 0-dim tensor");
  const int64_t last = x.size(-1);
  TORCH_CHECK(last % 2 == 0, "the last dim of x must be even ([..., 2F]: value and gate halves), got shape ",
              x.sizes());
  GegluArgs a;
  a.tanh = geglu_tanh(approximate);
  a.f = last / 2;
  a.out_sizes = x.sizes().vec();
  a.out_sizes.back() = a.f;
  a.rows = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) a.rows *= x.size(d);
  if (a.rows > 0 && a.f > 0) {
    if (x.is_contiguous()) {  // the common case (a Linear's output), without a view's allocation
      a.x = x;
      a.row_stride = last;
      return a;
    }
    a.x = x.reshape({a.rows, last});  // a view when the leading dims collapse, else a copy
    if (a.x.stride(1) != 1) a.x = a.x.contiguous();
    a.row_stride = a.x.stride(0);
  }
  return a;
}

// grad_out: the forward output's shape [..., F], x's dtype and device; returned as a contiguous [R, F].
inline at::Tensor check_geglu_grad(const at::Tensor& grad_out, const at::Tensor& x, const GegluArgs& a) {
  check_float("grad_out", grad_out, &x);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(a.out_sizes), "grad_out must have the output's shape ",
              at::IntArrayRef(a.out_sizes), " (x's with the last dim halved), got ", grad_out.sizes());
  if (a.rows == 0 || a.f == 0) return grad_out;
  return grad_out.reshape({a.rows, a.f}).contiguous();
}

}  // namespace fastdiff
