// FASTDIFF_HD marks the inline math shared by the CPU (g++) and CUDA (nvcc) kernels.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define FASTDIFF_HD __host__ __device__ __forceinline__
#define FASTDIFF_NO_UNROLL _Pragma("unroll 1")
#else
#define FASTDIFF_HD inline
#define FASTDIFF_NO_UNROLL
#endif

namespace fastdiff {

// Overloads so one templated formula runs in float (fp16/bf16/fp32 storage) or double (fp64 storage).
FASTDIFF_HD float fd_sqrt(float v) { return sqrtf(v); }
FASTDIFF_HD double fd_sqrt(double v) { return sqrt(v); }
FASTDIFF_HD float fd_exp(float v) { return expf(v); }
FASTDIFF_HD double fd_exp(double v) { return exp(v); }

}  // namespace fastdiff
