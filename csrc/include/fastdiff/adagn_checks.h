// Argument checks of the adagn ops shared by the CPU (csrc/cpu/adagn.cpp) and CUDA (csrc/cuda/adagn_torch.cpp)
// registrations, mirroring fastdiff/ops/adagn.py. Includes torch; never include it from a .cu file.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>

#include "fastdiff/checks.h"

namespace fastdiff {

// x as a contiguous [N, C, S] tensor and the per-channel parameters as contiguous accumulation-dtype tensors
// (gamma, beta: [C]; scale, shift: [N, C], undefined when absent).
struct AdaGNArgs {
  at::Tensor x, gamma, beta, scale, shift;
  int64_t n = 0, c = 0, g = 0, s = 0;  // N, C, G, S = prod(spatial)
};

inline AdaGNArgs check_adagn(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                             const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                             int64_t num_groups, double eps) {
  check_float("x", x);
  TORCH_CHECK(x.dim() >= 2, "x must be [N, C, *spatial] with at least 2 dims, got shape ", x.sizes());
  TORCH_CHECK(num_groups >= 1, "num_groups must be a positive int, got ", num_groups);
  const int64_t c = x.size(1);
  TORCH_CHECK(c % num_groups == 0, "the channel count C = ", c, " of x (shape ", x.sizes(),
              ") is not divisible by num_groups = ", num_groups);
  TORCH_CHECK(eps > 0, "eps must be > 0, got ", eps);
  const at::ScalarType acc = acc_type(x.scalar_type());
  AdaGNArgs a;
  for (auto [name, p, out] : {std::tuple{"weight", &weight, &a.gamma}, std::tuple{"bias", &bias, &a.beta}}) {
    check_float(name, *p, &x);
    TORCH_CHECK(p->dim() == 1 && p->size(0) == c, name, " must have shape [C] = [", c, "], got ", p->sizes());
    *out = p->to(acc).contiguous();
  }
  for (auto [name, p, out] : {std::tuple{"scale", &scale, &a.scale}, std::tuple{"shift", &shift, &a.shift}}) {
    if (!p->has_value()) continue;
    const at::Tensor& v = **p;
    check_float(name, v, &x);
    TORCH_CHECK(v.dim() == 2 && v.size(0) == x.size(0) && v.size(1) == c, name, " must have shape [N, C] = [",
                x.size(0), ", ", c, "] (one value per sample and channel), got ", v.sizes());
    *out = v.to(acc).contiguous();
  }
  a.x = x.contiguous();
  a.n = x.size(0);
  a.c = c;
  a.g = num_groups;
  a.s = a.n > 0 && c > 0 ? x.numel() / (a.n * c) : 0;
  if (a.n == 0 || c == 0) {
    int64_t s = 1;
    for (int64_t d = 2; d < x.dim(); ++d) s *= x.size(d);
    a.s = s;
  }
  return a;
}

// mean, rstd: [N, G] in the accumulation dtype, as the forward returned them.
inline void check_adagn_stats(const AdaGNArgs& a, const at::Tensor& mean, const at::Tensor& rstd) {
  const at::ScalarType acc = acc_type(a.x.scalar_type());
  for (auto [name, v] : {std::pair{"mean", &mean}, std::pair{"rstd", &rstd}}) {
    TORCH_CHECK(v->scalar_type() == acc && v->dim() == 2 && v->size(0) == a.n && v->size(1) == a.g, name,
                " must be the forward's [N, G] = [", a.n, ", ", a.g, "] ", acc, " statistics, got ", v->sizes(), " ",
                v->scalar_type());
    TORCH_CHECK(v->device() == a.x.device(), name, " is on ", v->device(), " but x is on ", a.x.device());
  }
}

}  // namespace fastdiff
