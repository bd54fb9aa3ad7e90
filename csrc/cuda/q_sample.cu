// Forward-process sample q(x_t | x_0) (DDPM eq. 4): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, one fused pass.
#include "row_affine.cuh"

namespace fastdiff {
namespace cuda {

void launch_q_sample(DType dtype, Rows rows, TableArgs table, const void* x_start, const void* noise, void* out,
                     cudaStream_t stream) {
  if (rows.m == 0) return;
  launch_row_affine<false>(dtype, rows, table, x_start, noise, out, nullptr, nullptr, stream);
}

}  // namespace cuda
}  // namespace fastdiff
