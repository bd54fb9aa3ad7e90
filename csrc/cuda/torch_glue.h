// Glue between the torch registrations (*_torch.cpp) and the raw-pointer launchers: dtype mapping, table
// arguments, the current stream. Host compiler only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "fastdiff/checks.h"
#include "launchers.h"

namespace fastdiff {
namespace cuda {

inline DType dtype_of(const at::Tensor& v) {
  switch (v.scalar_type()) {
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    default: TORCH_CHECK(false, "fastdiff CUDA kernels take float16, bfloat16, float32 or float64, got ",
                         v.scalar_type());
  }
}

// coefs and t are already checked and contiguous (check_coefs_t); t is int64.
inline TableArgs table_args(const at::Tensor& coefs, const at::Tensor& t) {
  TableArgs a;
  a.coefs = coefs.data_ptr();
  a.coefs_dtype = dtype_of(coefs);
  a.table_len = coefs.size(0);
  a.t = t.data_ptr<int64_t>();
  return a;
}

inline const void* ptr_or_null(const at::Tensor& v) { return v.defined() ? v.data_ptr() : nullptr; }

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace cuda
}  // namespace fastdiff
