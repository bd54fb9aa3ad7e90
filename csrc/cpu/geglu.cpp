// GEGLU (Shazeer 2020, eq. 5; diffusers' `GEGLU`) on CPU, forward and backward: out = h · GELU(g) with
// (h, g) = x.chunk(2, dim=-1). Math in fastdiff/gelu.h (shared with csrc/cuda/geglu.cu). x is read in place as
// R rows of 2F values with one row stride (a Linear's output, or any view whose leading dims collapse), else
// made contiguous; rows × chunks of kChunk values run in parallel (cpu_loop.h). The float loops are cloned for
// AVX2 / AVX-512 and vectorise: erf and exp are the branch-free polynomials of gelu.h.
#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/OpMathType.h>

#include <string_view>

#include "cpu_loop.h"
#include "fastdiff/checks.h"
#include "fastdiff/geglu_checks.h"

// No FP trap assumptions from here on (gelu.h included): under g++'s default -ftrapping-math the clamps of
// exp_fast (`v < -87 ? -87 : v`) are not if-converted without AVX-512 masks, and the x86-64-v3 / default clones
// would stay scalar. Results are unchanged (nothing here reads the FP exception flags).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "fastdiff/gelu.h"

namespace fastdiff {
namespace {

// Inlined into each clone below (too large for g++'s default inlining; a call would run the baseline-ISA loop).
template <typename A, bool TANH>
inline __attribute__((always_inline)) void fwd_loop(const A* h, const A* g, A* out, int64_t len) {
  for (int64_t j = 0; j < len; ++j) out[j] = gelu::geglu<A, TANH>(h[j], g[j]);
}

template <typename A, bool TANH>
inline __attribute__((always_inline)) void bwd_loop(const A* dy, const A* h, const A* g, A* dh, A* dg, int64_t len) {
  for (int64_t j = 0; j < len; ++j) {
    const gelu::GegluGrads<A> d = gelu::geglu_grads<A, TANH>(dy[j], h[j], g[j]);
    dh[j] = d.h;
    dg[j] = d.g;
  }
}

// The float instantiations, compiled also for AVX2 / AVX-512 (picked at load time).
FASTDIFF_CPU_CLONES void fwd_erf_f(const float* h, const float* g, float* o, int64_t len) {
  fwd_loop<float, false>(h, g, o, len);
}
FASTDIFF_CPU_CLONES void fwd_tanh_f(const float* h, const float* g, float* o, int64_t len) {
  fwd_loop<float, true>(h, g, o, len);
}
FASTDIFF_CPU_CLONES void bwd_erf_f(const float* dy, const float* h, const float* g, float* dh, float* dg,
                                   int64_t len) {
  bwd_loop<float, false>(dy, h, g, dh, dg, len);
}
FASTDIFF_CPU_CLONES void bwd_tanh_f(const float* dy, const float* h, const float* g, float* dh, float* dg,
                                    int64_t len) {
  bwd_loop<float, true>(dy, h, g, dh, dg, len);
}

void fwd_k(const float* h, const float* g, float* o, int64_t len, bool tanh) {
  tanh ? fwd_tanh_f(h, g, o, len) : fwd_erf_f(h, g, o, len);
}
void fwd_k(const double* h, const double* g, double* o, int64_t len, bool tanh) {
  tanh ? fwd_loop<double, true>(h, g, o, len) : fwd_loop<double, false>(h, g, o, len);
}
void bwd_k(const float* dy, const float* h, const float* g, float* dh, float* dg, int64_t len, bool tanh) {
  tanh ? bwd_tanh_f(dy, h, g, dh, dg, len) : bwd_erf_f(dy, h, g, dh, dg, len);
}
void bwd_k(const double* dy, const double* h, const double* g, double* dh, double* dg, int64_t len, bool tanh) {
  tanh ? bwd_loop<double, true>(dy, h, g, dh, dg, len) : bwd_loop<double, false>(dy, h, g, dh, dg, len);
}

at::Tensor geglu_cpu(const at::Tensor& x, c10::string_view approximate) {
  const GegluArgs a = check_geglu(x, approximate);
  at::Tensor out = at::empty(a.out_sizes, x.options());
  if (a.rows == 0 || a.f == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastdiff_geglu_cpu", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const T* xp = a.x.data_ptr<T>();
    T* op = out.data_ptr<T>();
    const int64_t f = a.f, rs = a.row_stride;
    cpu::for_each_row_chunk(a.rows, f, [&](int64_t n, int64_t b, int64_t e) {
      A hb[cpu::kBuf<A, T>], gb[cpu::kBuf<A, T>], ob[cpu::kBuf<A, T>];
      const int64_t len = e - b;
      const T* row = xp + n * rs;
      A* o = cpu::out_buf(op + n * f + b, ob);
      fwd_k(cpu::load(row + b, hb, len), cpu::load(row + f + b, gb, len), o, len, a.tanh);
      cpu::store(o, op + n * f + b, len);
    });
  });
  return out;
}

at::Tensor geglu_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, c10::string_view approximate) {
  const GegluArgs a = check_geglu(x, approximate);
  const at::Tensor dy = check_geglu_grad(grad_out, x, a);
  at::Tensor dx = at::empty(x.sizes(), x.options());
  if (a.rows == 0 || a.f == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastdiff_geglu_backward_cpu", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const T *xp = a.x.data_ptr<T>(), *dyp = dy.data_ptr<T>();
    T* dxp = dx.data_ptr<T>();
    const int64_t f = a.f, rs = a.row_stride;
    cpu::for_each_row_chunk(a.rows, f, [&](int64_t n, int64_t b, int64_t e) {
      A yb[cpu::kBuf<A, T>], hb[cpu::kBuf<A, T>], gb[cpu::kBuf<A, T>], dhb[cpu::kBuf<A, T>], dgb[cpu::kBuf<A, T>];
      const int64_t len = e - b;
      const T* row = xp + n * rs;
      T* drow = dxp + n * 2 * f;
      A *dh = cpu::out_buf(drow + b, dhb), *dg = cpu::out_buf(drow + f + b, dgb);
      bwd_k(cpu::load(dyp + n * f + b, yb, len), cpu::load(row + b, hb, len), cpu::load(row + f + b, gb, len), dh,
            dg, len, a.tanh);
      cpu::store(dh, drow + b, len);
      cpu::store(dg, drow + f + b, len);
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) {
  m.impl("geglu", &geglu_cpu);
  m.impl("geglu_backward", &geglu_backward_cpu);
}

}  // namespace fastdiff
