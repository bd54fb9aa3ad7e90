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
                                                 bool return_x0, const c10::optional<at::Tensor>& seed_tensor) {
  check_prediction(prediction);
  const StepArgs a = check_step(x, model_output, model_output_uncond, coefs, t, noise, seed, offset, seed_tensor);
  seed = host_seed(a, seed);
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
      const int64_t len = e - b;
      A z[cpu::kChunk], xb[cpu::kBuf<A, T>], mob[cpu::kBuf<A, T>], varb[cpu::kBuf<A, T>], mub[cpu::kBuf<A, T>];
      A outb[cpu::kBuf<A, T>], x0b[cpu::kBuf<A, T>];
      const A* zs = cpu::chunk_noise(z, noise_p, seed, offset, n, m, b, e);
      const T* mo_t = mop + n * a.mo_row + b;
      const A* xr = cpu::load(xp + n * m + b, xb, len);
      const A* mo = cpu::load(mo_t, mob, len);
      // Learned variance: channels C..2C of the conditional output, read only when there is noise to scale.
      const A* var = cpu::load(learned && zs != nullptr ? mo_t + m : nullptr, varb, len);
      const A* mu = cpu::load(mup != nullptr ? mup + n * a.mou_row + b : nullptr, mub, len);
      T* out_t = outp + n * m + b;
      T* x0_t = x0p != nullptr ? x0p + n * m + b : nullptr;
      A* out = cpu::out_buf(out_t, outb);
      A* x0r = cpu::out_buf(x0_t, x0b);
      cpu::with_flags([&](auto cfg, auto noisy, auto keep_x0, auto learned_var) {
        for (int64_t j = 0; j < len; ++j) {
          const A xv = xr[j];
          A eps = mo[j];
          if constexpr (cfg) eps = guided(eps, mu[j], scale);
          const A x0 = predict_x0(c.x0, xv, eps);
          A r = ddpm_mean(c, xv, x0);
          if constexpr (noisy) {
            A std = c.fixed_std;
            if constexpr (learned_var) std = ddpm_learned_std(c, var[j]);
            r += std * zs[j];
          }
          out[j] = r;
          if constexpr (keep_x0) x0r[j] = x0;
        }
      }, mu != nullptr, zs != nullptr, x0r != nullptr, learned);
      cpu::store(out, out_t, len);
      cpu::store(x0r, x0_t, len);
    });
  });
  return {x_prev, x0_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) { m.impl("ddpm_step", &ddpm_step_cpu); }

}  // namespace fastdiff
