// Host launcher of the adaLN modulate forward kernel (csrc/cuda/adaln_modulate.cu): raw pointers, strides, sizes
// and a stream; no torch types, so adaln_modulate.cu compiles with nvcc alone (`make cuda-check`). Enqueues work
// only; never synchronises.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "launchers.h"

namespace fastdiff {
namespace cuda {

// Row (b, l) of an input starts at ptr + b·sb + l·sl (elements) and holds D contiguous values; a per-sample
// argument ([B, D] / [B, 1, D]) has sl = 0. Every input is in the storage dtype; absent ones are null.
struct AdaLNParams {
  const void *x = nullptr, *residual = nullptr, *gate = nullptr, *scale = nullptr, *shift = nullptr;
  int64_t x_sb = 0, x_sl = 0, r_sb = 0, r_sl = 0, g_sb = 0, g_sl = 0, s_sb = 0, s_sl = 0, sh_sb = 0, sh_sl = 0;
  const void *weight = nullptr, *bias = nullptr;  // [D], contiguous
  void *out = nullptr, *h = nullptr;              // [B, L, D] contiguous; h written only when gated (gate != null)
  void *mean = nullptr, *rstd = nullptr;          // [B, L], accumulation dtype (float, double for fp64)
  int64_t b = 0, l = 0, d = 0;
  double eps = 1e-6;
  bool rms = false;
};

// h = residual + gate·x (gated), out = norm(h)·(1 + scale) + shift with norm LayerNorm or RMSNorm over D
// (fastdiff/adaln.h). D = 0 launches nothing: the caller fills mean = 0, rstd = 1/√eps.
void launch_adaln_modulate(DType dtype, const AdaLNParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastdiff
