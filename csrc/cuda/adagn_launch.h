// Host launcher of the AdaGN forward kernel (csrc/cuda/adagn.cu): raw pointers, sizes and a stream; no torch
// types, so adagn.cu compiles with nvcc alone (`make cuda-check`). Enqueues work only; never synchronises.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "launchers.h"

namespace fastdiff {
namespace cuda {

struct AdaGNParams {
  const void* x = nullptr;                   // [N, C, S], or [N, S, C] when channels_last; storage dtype
  void* out = nullptr;                       // like x (same layout)
  const void *gamma = nullptr, *beta = nullptr;   // [C], accumulation dtype (float, double for fp64)
  const void *scale = nullptr, *shift = nullptr;  // [N, C] accumulation dtype, or null when absent
  void *mean = nullptr, *rstd = nullptr;          // [N, G] accumulation dtype (written)
  int64_t n = 0, c = 0, g = 0, s = 0;
  double eps = 1e-5;
  bool silu = true;
  bool channels_last = false;  // x and out are [N, S, C] in memory (channels_last / channels_last_3d)
};

// Bytes of workspace the launch needs on the current device (split Welford partials and the per-(sample, channel)
// affine maps); the caller allocates it.
int64_t adagn_workspace_bytes(DType dtype, const AdaGNParams& p);

void launch_adagn(DType dtype, const AdaGNParams& p, void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastdiff
