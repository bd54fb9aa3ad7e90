// Argument checks of the adagn ops shared by the CPU (csrc/cpu/adagn.cpp) and CUDA (csrc/cuda/adagn_torch.cpp)
// registrations, mirroring fastdiff/ops/adagn.py. Includes torch; never include it from a .cu file.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>

#include "fastdiff/checks.h"

namespace fastdiff {

// x read in place in one of two layouts (docs/architecture.md, "The op contract": the output keeps x's memory
// format): [N, C, S] when x is contiguous, [N, S, C] when x is channels_last (4-D) / channels_last_3d (5-D) and not
// contiguous; any other strides are copied to [N, C, S] once. The per-channel parameters as contiguous
// accumulation-dtype tensors (gamma, beta: [C]; scale, shift: [N, C], undefined when absent); copies are made only
// where the caller's tensors are not already that.
struct AdaGNArgs {
  at::Tensor x, gamma, beta, scale, shift;
  int64_t n = 0, c = 0, g = 0, s = 0;  // N, C, G, S = prod(spatial)
  bool channels_last = false;          // x (and the output) is [N, S, C] in memory
};

// The memory format the adagn ops give their outputs for input x: channels_last(_3d) when x is stored that way and
// is not also contiguous (a size-1 C or spatial extent makes both hold: contiguous wins), else contiguous. The fake
// kernel in fastdiff/ops/adagn.py applies the same rule.
inline bool adagn_channels_last(const at::Tensor& x) {
  if (x.is_contiguous()) return false;
  return (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
         (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d));
}

inline at::MemoryFormat adagn_memory_format(int64_t dim, bool channels_last) {
  if (!channels_last) return at::MemoryFormat::Contiguous;
  return dim == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast;
}

// A tensor shaped like x, in the layout of a.x (x's memory format, see AdaGNArgs), with the given dtype.
inline at::Tensor adagn_empty_like_x(const AdaGNArgs& a, at::ScalarType dtype) {
  return at::empty(a.x.sizes(), a.x.options().dtype(dtype).memory_format(adagn_memory_format(a.x.dim(), a.channels_last)));
}

// v (shaped like x) in the layout of a.x: v itself when it already is, else one copy.
inline at::Tensor adagn_like_layout(const AdaGNArgs& a, const at::Tensor& v) {
  return v.contiguous(adagn_memory_format(a.x.dim(), a.channels_last));
}

// p as a contiguous tensor of dtype acc: p itself when it already is one (no dispatcher call).
inline at::Tensor adagn_param(const at::Tensor& p, at::ScalarType acc) {
  return p.scalar_type() == acc && p.is_contiguous() ? p : p.to(acc).contiguous();
}

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
    *out = adagn_param(*p, acc);
  }
  for (auto [name, p, out] : {std::tuple{"scale", &scale, &a.scale}, std::tuple{"shift", &shift, &a.shift}}) {
    if (!p->has_value()) continue;
    const at::Tensor& v = **p;
    check_float(name, v, &x);
    TORCH_CHECK(v.dim() == 2 && v.size(0) == x.size(0) && v.size(1) == c, name, " must have shape [N, C] = [",
                x.size(0), ", ", c, "] (one value per sample and channel), got ", v.sizes());
    *out = adagn_param(v, acc);
  }
  a.channels_last = adagn_channels_last(x);
  a.x = a.channels_last ? x : x.contiguous();
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
