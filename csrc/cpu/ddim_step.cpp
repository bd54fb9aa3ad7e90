// DDIM step on CPU (Song et al. eq. 12 with CFG, clipping and noise); math in fastdiff/sampler_math.h.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <tuple>

#include "cpu_loop.h"
#include "fastdiff/checks.h"
#include "fastdiff/sampler_math.h"

namespace fastdiff {
namespace {

std::tuple<at::Tensor, at::Tensor> ddim_step_cpu(const at::Tensor& x, const at::Tensor& model_output,
                                                 const c10::optional<at::Tensor>& model_output_uncond,
                                                 const at::Tensor& coefs, const at::Tensor& t, double eta,
                                                 int64_t prediction, bool clip_denoised, double guidance_scale,
                                                 const c10::optional<at::Tensor>& noise, int64_t seed, int64_t offset,
                                                 bool return_x0, const c10::optional<at::Tensor>& seed_tensor) {
  check_prediction(prediction);
  const StepArgs a = check_step(x, model_output, model_output_uncond, coefs, t, noise, seed, offset, seed_tensor);
  seed = host_seed(a, seed);
  at::Tensor x_prev = at::empty_like(a.x);
  at::Tensor x0_out = return_x0 ? at::empty_like(a.x) : at::empty({0}, a.x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "ddim_step_cpu", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const auto cs = cpu::per_sample<DdimCoefs<A>>(a.coefs, a.t, [&](const auto* row, int64_t tn) {
      return ddim_coefs<A>(row, tn != 0, static_cast<A>(eta), static_cast<int>(prediction), clip_denoised);
    });
    const T* xp = a.x.data_ptr<T>();
    const T* mop = a.mo.data_ptr<T>();
    const T* mup = cpu::ptr_or_null<T>(a.mou);
    const T* noise_p = cpu::ptr_or_null<T>(a.noise);
    T* outp = x_prev.data_ptr<T>();
    T* x0p = return_x0 ? x0_out.data_ptr<T>() : nullptr;
    const A scale = static_cast<A>(guidance_scale);
    const int64_t m = a.m;
    cpu::for_each_row_chunk(a.n, m, [&](int64_t n, int64_t b, int64_t e) {
      const DdimCoefs<A> c = cs[n];
      const int64_t len = e - b;
      A z[cpu::kChunk], xb[cpu::kBuf<A, T>], mob[cpu::kBuf<A, T>], mub[cpu::kBuf<A, T>];
      A outb[cpu::kBuf<A, T>], x0b[cpu::kBuf<A, T>];
      // Philox normals are finite, so a zero noise scale (t = 0 or η = 0) adds exactly nothing: skip them.
      const A* zs = noise_p != nullptr || c.noise_scale != A(0)
                        ? cpu::chunk_noise(z, noise_p, seed, offset, n, m, b, e) : nullptr;
      const A* xr = cpu::load(xp + n * m + b, xb, len);
      const A* mo = cpu::load(mop + n * a.mo_row + b, mob, len);
      const A* mu = cpu::load(mup != nullptr ? mup + n * a.mou_row + b : nullptr, mub, len);
      T* out_t = outp + n * m + b;
      T* x0_t = x0p != nullptr ? x0p + n * m + b : nullptr;
      A* out = cpu::out_buf(out_t, outb);
      A* x0r = cpu::out_buf(x0_t, x0b);
      cpu::with_flags([&](auto cfg, auto noisy, auto keep_x0) {
        for (int64_t j = 0; j < len; ++j) {
          const A xv = xr[j];
          A eps = mo[j];
          if constexpr (cfg) eps = guided(eps, mu[j], scale);
          const A x0 = predict_x0(c.x0, xv, eps);
          A r = ddim_mean(c, xv, x0);
          if constexpr (noisy) r += c.noise_scale * zs[j];
          out[j] = r;
          if constexpr (keep_x0) x0r[j] = x0;
        }
      }, mu != nullptr, zs != nullptr, x0r != nullptr);
      cpu::store(out, out_t, len);
      cpu::store(x0r, x0_t, len);
    });
  });
  return {x_prev, x0_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) { m.impl("ddim_step", &ddim_step_cpu); }

}  // namespace fastdiff
