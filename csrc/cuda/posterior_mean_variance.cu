// Posterior q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7): μ̃_t = coef1 x_0 + coef2 x_t, β̃_t and clipped log β̃_t.
#include "row_affine.cuh"

namespace fastdiff {
namespace cuda {

void launch_posterior_mean_variance(DType dtype, Rows rows, TableArgs table, const void* x_start, const void* x_t,
                                    void* mean, void* var, void* log_var, cudaStream_t stream) {
  launch_row_affine<true>(dtype, rows, table, x_start, x_t, mean, var, log_var, stream);
}

}  // namespace cuda
}  // namespace fastdiff
