// Host launchers of the GEGLU kernels (csrc/cuda/geglu.cu): raw pointers, sizes and a stream; no torch types, so
// geglu.cu compiles with nvcc alone (`make cuda-check`). Enqueue work only; never synchronise.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "launchers.h"

namespace fastdiff {
namespace cuda {

// out = x[:, :F]·GELU(x[:, F:]) for R rows; the backward writes dx = [dy·GELU(g), dy·h·GELU'(g)].
struct GegluParams {
  const void* x = nullptr;   // [R, 2F] rows with unit element stride and row stride x_row_stride (elements)
  const void* dy = nullptr;  // backward: [R, F] contiguous
  void* out = nullptr;       // forward: [R, F] contiguous; backward: dx [R, 2F] contiguous
  int64_t rows = 0, f = 0, x_row_stride = 0;
  bool tanh = false;         // approximate="tanh" (else the erf GELU)
};

void launch_geglu(DType dtype, const GegluParams& p, cudaStream_t stream);
void launch_geglu_backward(DType dtype, const GegluParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastdiff
