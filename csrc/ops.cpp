// Every fastdiff op schema, in one place (the op contract: README, Backends). Kernels: csrc/cpu/<op>.cpp (CPU) and
// csrc/cuda/<op>_torch.cpp (CUDA); fake kernels and autograd formulas: fastdiff/ops/_register.py.
// The positional signature of each `reference` in fastdiff/ops/<op>.py is its schema.
// The sampler step keys its in-kernel noise by `seed` (an int; -1: none) or by `seed_tensor` (int64 [] or [1] on
// x's device, read by the kernel, so a captured CUDA graph replays with the value it holds; seed must then be -1).
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(fastdiff, m) {
  // The one sampler step (docs/architecture.md, "Adding a sampler"), every sampler's update (fastdiff.ops.ddim_step / ddpm_step build its rows):
  // coefficients per sample from row step[n] of the [S, STEP_NCOL] table; history ([K, N, ...] slots, or None) is
  // written in place; var_mode 0 table, 1 learned, 2 learned_range.
  m.def(
      "sampler_step(Tensor x, Tensor model_output, Tensor? model_output_uncond, Tensor table, Tensor step, "
      "Tensor(a!)? history, int var_mode, Tensor? noise, int seed, int offset, bool return_denoised, "
      "Tensor? seed_tensor=None) -> (Tensor, Tensor)");
  m.def("q_sample(Tensor x_start, Tensor noise, Tensor coefs, Tensor t) -> Tensor");
  m.def("posterior_mean_variance(Tensor x_start, Tensor x_t, Tensor coefs, Tensor t) -> (Tensor, Tensor, Tensor)");
  m.def("randn_like(Tensor x, int seed, int offset) -> Tensor");
  m.def("adagn(Tensor x, Tensor weight, Tensor bias, Tensor? scale, Tensor? shift, int num_groups, float eps, "
        "bool silu) -> (Tensor out, Tensor mean, Tensor rstd)");
  m.def("adagn_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor bias, Tensor? scale, Tensor? shift, "
        "Tensor mean, Tensor rstd, int num_groups, bool silu) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // GEGLU (fastdiff/ops/geglu.py): x [..., 2F] -> x[..., :F]·GELU(x[..., F:]) [..., F]; approximate "none" (erf)
  // or "tanh", as aten::gelu's. The backward returns ∂x [..., 2F] (value half, then gate half).
  m.def("geglu(Tensor x, str approximate) -> Tensor");
  m.def("geglu_backward(Tensor grad_out, Tensor x, str approximate) -> Tensor");
  // adaLN modulate (fastdiff/ops/adaln_modulate.py): h = residual + gate·x when gated (else h is empty [0]),
  // out = norm(h)·(1 + scale) + shift; mean, rstd: [B, L] in the accumulation dtype. The backward returns
  // (∂h, ∂x, ∂gate, ∂scale, ∂shift, ∂weight, ∂bias), an empty [0] tensor for an absent argument.
  m.def("adaln_modulate(Tensor x, Tensor? scale, Tensor? shift, Tensor? weight, Tensor? bias, Tensor? residual, "
        "Tensor? gate, bool rms, float eps) -> (Tensor out, Tensor h, Tensor mean, Tensor rstd)");
  m.def("adaln_modulate_backward(Tensor grad_out, Tensor? grad_h, Tensor h, Tensor? x, Tensor? gate, "
        "Tensor? scale, Tensor? shift, Tensor? weight, Tensor? bias, Tensor mean, Tensor rstd, bool rms) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// The sampler step and the noise stream are not differentiable: autograd passes through them (outputs do not
// require grad). q_sample and posterior_mean_variance get their formulas in fastdiff/ops/_register.py.
TORCH_LIBRARY_IMPL(fastdiff, Autograd, m) {
  m.impl("sampler_step", torch::CppFunction::makeFallthrough());
  m.impl("randn_like", torch::CppFunction::makeFallthrough());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastdiff fused kernels; the ops live in torch.ops.fastdiff";
  m.def("cuda_built", []() {
#ifdef FASTDIFF_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True when this build carries the CUDA kernels.");
}
