// DDPM ancestral step on CPU (Ho et al. eq. 7 / Algorithm 2, Improved DDPM eq. 15); math in
// fastdiff/sampler_math.h.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <tuple>

#include "cpu_loop.h"
#include "fastdiff/checks.h"
#include "fastdiff/sampler_math.h"

namespace fastdiff {
namespace {

std::tuple<at::Tensor, at::Tensor> ddpm_step_cpu(const at::Tensor& x, const at::Tensor& model_output,
                                                 const c10::optional<at::Tensor>& model_output_uncond,
                                                 const at::Tensor& coefs, const at::Tensor& t, int64_t prediction,
                                                 int64_t var_type, bool clip_denoised, double guidance_scale,
                                                 const c10::optional<at::Tensor>& noise, int64_t seed, int64_t offset,
                                                 bool return_x0) {
  check_prediction(prediction);
  const StepArgs a = check_step(x, model_output, model_output_uncond, coefs, t, noise, seed, offset);
  check_learned_var(a, var_type);
  at::Tensor x_prev = at::empty_like(a.x);
  at::Tensor x0_out = return_x0 ? at::empty_like(a.x) : at::empty({0}, a.x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "ddpm_step_cpu", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const auto cs = cpu::per_sample<DdpmCoefs<A>>(a.coefs, a.t, [&](const auto* row, int64_t tn) {
      return ddpm_coefs<A>(row, tn != 0, static_cast<int>(prediction), static_cast<int>(var_type), clip_denoised);
    });
    const T* xp = a.x.data_ptr<T>();
    const T* mop = a.mo.data_ptr<T>();
    const T* mup = cpu::ptr_or_null<T>(a.mou);
    const T* noise_p = cpu::ptr_or_null<T>(a.noise);
    T* outp = x_prev.data_ptr<T>();
    T* x0p = return_x0 ? x0_out.data_ptr<T>() : nullptr;
    const A scale = static_cast<A>(guidance_scale);
    const int64_t m = a.m;
    const bool learned = var_type >= VAR_LEARNED;
    cpu::for_each_row_chunk(a.n, m, [&](int64_t n, int64_t b, int64_t e) {
      const DdpmCoefs<A> c = cs[n];
      A z[cpu::kChunk];
      const bool has_z = cpu::chunk_noise(z, noise_p, seed, offset, n, m, b, e);
      const T* xr = xp + n * m;
      const T* mo = mop + n * a.mo_row;
      const T* var = mo + m;  // learned variance channels C..2C of the conditional output
      const T* mu = mup != nullptr ? mup + n * a.mou_row : nullptr;
      T* out = outp + n * m;
      T* x0r = x0p != nullptr ? x0p + n * m : nullptr;
      cpu::with_flags([&](auto cfg, auto noisy, auto keep_x0, auto learned_var) {
        for (int64_t i = b; i < e; ++i) {
          const A xv = static_cast<A>(xr[i]);
          A eps = static_cast<A>(mo[i]);
          if constexpr (cfg) eps = guided(eps, static_cast<A>(mu[i]), scale);
          const A x0 = predict_x0(c.x0, xv, eps);
          A r = ddpm_mean(c, xv, x0);
          if constexpr (noisy) {
            A std = c.fixed_std;
            if constexpr (learned_var) std = ddpm_learned_std(c, static_cast<A>(var[i]));
            r += std * z[i - b];
          }
          out[i] = static_cast<T>(r);
          if constexpr (keep_x0) x0r[i] = static_cast<T>(x0);
        }
      }, mu != nullptr, has_z, x0r != nullptr, learned);
    });
  });
  return {x_prev, x0_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) { m.impl("ddpm_step", &ddpm_step_cpu); }

}  // namespace fastdiff
