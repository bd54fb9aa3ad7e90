// Argument checks of the adaln_modulate ops shared by the CPU (csrc/cpu/adaln_modulate.cpp) and CUDA
// (csrc/cuda/adaln_modulate_torch.cpp) registrations, mirroring fastdiff/ops/adaln_modulate.py. Tensors are read
// in place through (batch, token) row strides: only a last dimension that is not unit-stride is copied.
// Includes torch; never include it from a .cu file.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "fastdiff/checks.h"

namespace fastdiff {

// Row (b, l) of a [B, L, D] tensor, or of a [B, D] / [B, 1, D] per-sample one (sl = 0), starts at
// data + b·sb + l·sl; its D values are contiguous. t is undefined when the argument is absent.
struct RowView {
  at::Tensor t;
  int64_t sb = 0, sl = 0;
  bool per_token = false;  // one row per (b, l) rather than per sample
  bool defined() const { return t.defined(); }
};

inline RowView row_view(const at::Tensor& v, bool tokens) {
  RowView r;
  r.t = v.size(-1) > 1 && v.stride(-1) != 1 ? v.contiguous() : v;
  r.sb = r.t.stride(0);
  if (tokens || (r.t.dim() == 3 && r.t.size(1) != 1)) {
    r.sl = r.t.stride(1);
    r.per_token = true;
  }
  return r;
}

struct AdaLNArgs {
  RowView x, residual, gate, scale, shift;
  at::Tensor weight, bias;  // [D], contiguous, storage dtype; undefined when absent
  int64_t b = 0, l = 0, d = 0;
};

// x: [B, L, D]; scale / shift / gate: [B, D], [B, 1, D] or [B, L, D]; residual: [B, L, D]; weight / bias: [D];
// every tensor in x's dtype and on its device.
inline AdaLNArgs check_adaln(const at::Tensor& x, const c10::optional<at::Tensor>& scale,
                             const c10::optional<at::Tensor>& shift, const c10::optional<at::Tensor>& weight,
                             const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                             const c10::optional<at::Tensor>& gate, bool rms, double eps) {
  check_float("x", x);
  TORCH_CHECK(x.dim() == 3, "x must be [B, L, D], got shape ", x.sizes());
  TORCH_CHECK(eps > 0, "eps must be > 0, got ", eps);
  AdaLNArgs a;
  a.b = x.size(0);
  a.l = x.size(1);
  a.d = x.size(2);
  for (auto [name, p, out] : {std::tuple{"weight", &weight, &a.weight}, std::tuple{"bias", &bias, &a.bias}}) {
    if (!p->has_value()) continue;
    check_float(name, **p, &x);
    TORCH_CHECK((*p)->dim() == 1 && (*p)->size(0) == a.d, name, " must have shape [D] = [", a.d, "], got ",
                (*p)->sizes());
    *out = (*p)->contiguous();
  }
  TORCH_CHECK(!(rms && bias.has_value()), "bias must be None with norm=\"rms\" (RMSNorm has no bias)");
  TORCH_CHECK(residual.has_value() == gate.has_value(), residual.has_value() ? "gate" : "residual",
              " must be given too: the gated form h = residual + gate·x takes both");
  for (auto [name, p, out] : {std::tuple{"scale", &scale, &a.scale}, std::tuple{"shift", &shift, &a.shift},
                              std::tuple{"gate", &gate, &a.gate}}) {
    if (!p->has_value()) continue;
    const at::Tensor& v = **p;
    check_float(name, v, &x);
    const bool ok = (v.dim() == 2 && v.size(0) == a.b && v.size(1) == a.d) ||
                    (v.dim() == 3 && v.size(0) == a.b && (v.size(1) == 1 || v.size(1) == a.l) && v.size(2) == a.d);
    TORCH_CHECK(ok, name, " must have shape [B, D], [B, 1, D] or [B, L, D] with [B, L, D] = ", x.sizes(), ", got ",
                v.sizes());
    *out = row_view(v, false);
  }
  if (residual.has_value()) {
    check_float("residual", *residual, &x);
    TORCH_CHECK(residual->sizes() == x.sizes(), "residual must have x's shape ", x.sizes(), ", got ",
                residual->sizes());
    a.residual = row_view(*residual, true);
  }
  a.x = row_view(x, true);
  return a;
}

// mean, rstd: [B, L] in the accumulation dtype, as the forward returned them.
inline void check_adaln_stats(const AdaLNArgs& a, const at::Tensor& mean, const at::Tensor& rstd) {
  const at::ScalarType acc = acc_type(a.x.t.scalar_type());
  for (auto [name, v] : {std::pair{"mean", &mean}, std::pair{"rstd", &rstd}}) {
    TORCH_CHECK(v->scalar_type() == acc && v->dim() == 2 && v->size(0) == a.b && v->size(1) == a.l, name,
                " must be the forward's [B, L] = [", a.b, ", ", a.l, "] ", acc, " statistics, got ", v->sizes(), " ",
                v->scalar_type());
    TORCH_CHECK(v->device() == a.x.t.device(), name, " is on ", v->device(), " but x is on ", a.x.t.device());
  }
}

}  // namespace fastdiff
