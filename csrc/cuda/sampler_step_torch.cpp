// TORCH_LIBRARY_IMPL(fastdiff, CUDA) for sampler_step: the shared checks, then the launcher on the current stream.
#include <torch/library.h>

#include <tuple>

#include "torch_glue.h"

namespace fastdiff {
namespace {

// Launch parameters: contiguous inputs, the outputs, history (written in place) and the noise source.
cuda::SamplerStepParams sampler_step_params(const SamplerStepArgs& a, at::Tensor& x_next, at::Tensor& d_out,
                                            bool return_denoised, int64_t var_mode, int64_t seed, int64_t offset) {
  cuda::SamplerStepParams p;
  p.x = a.x.data_ptr();
  p.mo = a.mo.data_ptr();
  p.mou = cuda::ptr_or_null(a.mou);
  p.noise = cuda::ptr_or_null(a.noise);
  p.out = x_next.data_ptr();
  p.d = return_denoised ? d_out.data_ptr() : nullptr;
  p.history = a.history.defined() ? a.history.data_ptr() : nullptr;
  p.history_len = static_cast<int>(a.k_slots);
  p.mo_row = a.mo_row;
  p.mou_row = a.mou_row;
  p.var_mode = static_cast<int>(var_mode);
  p.seed = seed;
  p.offset = offset;
  p.seed_ptr = a.seed.defined() ? a.seed.data_ptr<int64_t>() : nullptr;
  return p;
}

std::tuple<at::Tensor, at::Tensor> sampler_step_cuda(const at::Tensor& x, const at::Tensor& model_output,
                                                     const c10::optional<at::Tensor>& model_output_uncond,
                                                     const at::Tensor& table, const at::Tensor& step,
                                                     const c10::optional<at::Tensor>& history, int64_t var_mode,
                                                     const c10::optional<at::Tensor>& noise, int64_t seed,
                                                     int64_t offset, bool return_denoised,
                                                     const c10::optional<at::Tensor>& seed_tensor) {
  const SamplerStepArgs a = check_sampler_step(x, model_output, model_output_uncond, table, step, history, var_mode,
                                               noise, seed, offset, seed_tensor);
  const c10::cuda::CUDAGuard guard(a.x.device());
  at::Tensor x_next = at::empty_like(a.x);
  at::Tensor d_out = return_denoised ? at::empty_like(a.x) : at::empty({0}, a.x.options());
  const cuda::SamplerStepParams p = sampler_step_params(a, x_next, d_out, return_denoised, var_mode, seed, offset);
  cuda::launch_sampler_step(cuda::dtype_of(a.x), {a.n, a.m}, cuda::table_args(a.coefs, a.t), p,
                            cuda::current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {x_next, d_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CUDA, m) { m.impl("sampler_step", &sampler_step_cuda); }

}  // namespace fastdiff
