// TORCH_LIBRARY_IMPL(fastdiff, CUDA) for ddpm_step: the shared checks, then the launcher on the current stream.
#include <torch/library.h>

#include <tuple>

#include "torch_glue.h"

namespace fastdiff {
namespace {

std::tuple<at::Tensor, at::Tensor> ddpm_step_cuda(const at::Tensor& x, const at::Tensor& model_output,
                                                  const c10::optional<at::Tensor>& model_output_uncond,
                                                  const at::Tensor& coefs, const at::Tensor& t, int64_t prediction,
                                                  int64_t var_type, bool clip_denoised, double guidance_scale,
                                                  const c10::optional<at::Tensor>& noise, int64_t seed,
                                                  int64_t offset, bool return_x0,
                                                  const c10::optional<at::Tensor>& seed_tensor) {
  check_prediction(prediction);
  const StepArgs a = check_step(x, model_output, model_output_uncond, coefs, t, noise, seed, offset, seed_tensor);
  check_learned_var(a, var_type);
  const c10::cuda::CUDAGuard guard(a.x.device());
  at::Tensor x_prev = at::empty_like(a.x);
  at::Tensor x0_out = return_x0 ? at::empty_like(a.x) : at::empty({0}, a.x.options());
  cuda::StepParams p = cuda::step_params(a, x_prev, x0_out, return_x0, prediction, clip_denoised,
                                         guidance_scale, seed, offset);
  p.var_type = static_cast<int>(var_type);
  cuda::launch_ddpm_step(cuda::dtype_of(a.x), {a.n, a.m}, cuda::table_args(a.coefs, a.t), p, cuda::current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {x_prev, x0_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CUDA, m) { m.impl("ddpm_step", &ddpm_step_cuda); }

}  // namespace fastdiff
