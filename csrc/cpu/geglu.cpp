// GEGLU (Shazeer 2020, eq. 5; diffusers' `GEGLU`) on CPU, forward and backward: out = h · GELU(g) with
// (h, g) = x.chunk(2, dim=-1). Math in fastdiff/gelu.h (shared with csrc/cuda/geglu.cu). x is read in place as
// R rows of 2F values with one row stride (a Linear's output, or any view whose leading dims collapse), else
// made contiguous. Parallel over blocks of rows, one kernel call per block (rows of a small model's feed-forward
// are a few dozen values: a call per row would cost more than its arithmetic), or over (row, kChunk columns)
// pieces when rows are long; fp16 / bf16 rows are gathered into fp32 buffers of kChunk values. The float loops
// are cloned for AVX2 / AVX-512 and vectorise: erf and exp are the branch-free polynomials of gelu.h.
//
// Measured (2-core AMD EPYC VM shared with other jobs, fp32, median of 25 interleaved samples, 1 thread / 2
// threads) against diffusers' eager chunk + F.gelu + multiply: x [2, 4096, 2·1280] (SD 1.5, 64x64 latents)
// forward 35.8 / 41.0 ms vs 56.2 / 69.7 ms (1.57x / 1.70x), forward + backward 96.9 / 117 ms vs 185 / 228 ms
// (1.9x); x [2, 1024, 2·1280] forward 3.6 / 7.1 ms vs 14.0 / 21.5 ms; [2, 64, 2·32] forward 10 µs as eager,
// forward + backward 46 µs vs 58 µs. What bounds the large forward: its 42 MB output is a fresh mmap each call
// (glibc maps blocks over 32 MB), whose first touch alone costs 19 ms (page faults and the kernel's zeroing; the
// eager sequence touches two such buffers), and gelu.h's erf costs ~1.5x ATen's cheaper one (A&S 7.1.26, 1.5e-7
// absolute error) in cache: 0.9 vs 0.6 ns a value.
#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <type_traits>

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

// `rows` rows of `width` outputs: o[r·os + j] = h[r·xs + j]·GELU(g[r·xs + j]). Inlined into each clone below (too
// large for g++'s default inlining; a call would run the baseline-ISA loop).
template <typename A, bool TANH>
inline __attribute__((always_inline)) void fwd_rows(const A* h, const A* g, int64_t xs, A* o, int64_t os,
                                                    int64_t width, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    const A *hr = h + r * xs, *gr = g + r * xs;
    A* orow = o + r * os;
    for (int64_t j = 0; j < width; ++j) orow[j] = gelu::geglu<A, TANH>(hr[j], gr[j]);
  }
}

// The backward of fwd_rows: dh[r·ds + j] = dy·GELU(g), dg[r·ds + j] = dy·h·GELU'(g), dy = dy[r·ys + j].
template <typename A, bool TANH>
inline __attribute__((always_inline)) void bwd_rows(const A* dy, int64_t ys, const A* h, const A* g, int64_t xs,
                                                    A* dh, A* dg, int64_t ds, int64_t width, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    const A *yr = dy + r * ys, *hr = h + r * xs, *gr = g + r * xs;
    A *dhr = dh + r * ds, *dgr = dg + r * ds;
    for (int64_t j = 0; j < width; ++j) {
      const gelu::GegluGrads<A> d = gelu::geglu_grads<A, TANH>(yr[j], hr[j], gr[j]);
      dhr[j] = d.h;
      dgr[j] = d.g;
    }
  }
}

// The float instantiations, compiled also for AVX2 / AVX-512 (picked at load time).
FASTDIFF_CPU_CLONES void fwd_erf_f(const float* h, const float* g, int64_t xs, float* o, int64_t os, int64_t width,
                                   int64_t rows) {
  fwd_rows<float, false>(h, g, xs, o, os, width, rows);
}
FASTDIFF_CPU_CLONES void fwd_tanh_f(const float* h, const float* g, int64_t xs, float* o, int64_t os,
                                    int64_t width, int64_t rows) {
  fwd_rows<float, true>(h, g, xs, o, os, width, rows);
}
FASTDIFF_CPU_CLONES void bwd_erf_f(const float* dy, int64_t ys, const float* h, const float* g, int64_t xs,
                                   float* dh, float* dg, int64_t ds, int64_t width, int64_t rows) {
  bwd_rows<float, false>(dy, ys, h, g, xs, dh, dg, ds, width, rows);
}
FASTDIFF_CPU_CLONES void bwd_tanh_f(const float* dy, int64_t ys, const float* h, const float* g, int64_t xs,
                                    float* dh, float* dg, int64_t ds, int64_t width, int64_t rows) {
  bwd_rows<float, true>(dy, ys, h, g, xs, dh, dg, ds, width, rows);
}

void fwd_k(const float* h, const float* g, int64_t xs, float* o, int64_t os, int64_t width, int64_t rows,
           bool tanh) {
  tanh ? fwd_tanh_f(h, g, xs, o, os, width, rows) : fwd_erf_f(h, g, xs, o, os, width, rows);
}
void fwd_k(const double* h, const double* g, int64_t xs, double* o, int64_t os, int64_t width, int64_t rows,
           bool tanh) {
  tanh ? fwd_rows<double, true>(h, g, xs, o, os, width, rows) : fwd_rows<double, false>(h, g, xs, o, os, width, rows);
}
void bwd_k(const float* dy, int64_t ys, const float* h, const float* g, int64_t xs, float* dh, float* dg,
           int64_t ds, int64_t width, int64_t rows, bool tanh) {
  tanh ? bwd_tanh_f(dy, ys, h, g, xs, dh, dg, ds, width, rows) : bwd_erf_f(dy, ys, h, g, xs, dh, dg, ds, width, rows);
}
void bwd_k(const double* dy, int64_t ys, const double* h, const double* g, int64_t xs, double* dh, double* dg,
           int64_t ds, int64_t width, int64_t rows, bool tanh) {
  tanh ? bwd_rows<double, true>(dy, ys, h, g, xs, dh, dg, ds, width, rows)
       : bwd_rows<double, false>(dy, ys, h, g, xs, dh, dg, ds, width, rows);
}

// f(r0, r1, b, e) over pieces of rows [r0, r1) x columns [b, e) of R rows of F values, in parallel: blocks of
// whole rows when F < kChunk (at least kGrainElements values per task), else single rows in kChunk columns.
template <typename Fn>
void for_each_piece(int64_t rows, int64_t f, const Fn& fn) {
  if (f >= cpu::kChunk) {
    cpu::for_each_row_chunk(rows, f, [&](int64_t n, int64_t b, int64_t e) { fn(n, n + 1, b, e); });
    return;
  }
  at::parallel_for(0, rows, std::max<int64_t>(1, cpu::kGrainElements / f),
                   [&](int64_t r0, int64_t r1) { fn(r0, r1, int64_t(0), f); });
}

// Output rows [r0, r1), columns [b, e) of x ([R, 2F], row stride rs) into out ([R, F], contiguous).
template <typename T>
void fwd_piece(const T* xp, int64_t rs, T* op, int64_t f, int64_t r0, int64_t r1, int64_t b, int64_t e, bool tanh) {
  using A = at::opmath_type<T>;
  if constexpr (std::is_same_v<A, T>) {
    fwd_k(xp + r0 * rs + b, xp + r0 * rs + f + b, rs, op + r0 * f + b, f, e - b, r1 - r0, tanh);
  } else {
    // Gather up to kChunk values (whole rows, or one row's piece) into fp32: one kernel call, one store.
    A hb[cpu::kChunk], gb[cpu::kChunk], ob[cpu::kChunk];
    const int64_t w = e - b, per = std::max<int64_t>(1, cpu::kChunk / w);
    for (int64_t r = r0; r < r1; r += per) {
      const int64_t n = std::min(per, r1 - r);
      for (int64_t i = 0; i < n; ++i) {
        cpu::convert(xp + (r + i) * rs + b, hb + i * w, w);
        cpu::convert(xp + (r + i) * rs + f + b, gb + i * w, w);
      }
      fwd_k(hb, gb, 0, ob, 0, n * w, 1, tanh);
      cpu::convert(ob, op + r * f + b, n * w);  // n > 1 only for whole rows (w = f), contiguous in out
    }
  }
}

// ∂x rows [r0, r1), columns [b, e) of each half, from dy ([R, F] contiguous) and x; dx: [R, 2F] contiguous.
template <typename T>
void bwd_piece(const T* yp, const T* xp, int64_t rs, T* dxp, int64_t f, int64_t r0, int64_t r1, int64_t b,
               int64_t e, bool tanh) {
  using A = at::opmath_type<T>;
  if constexpr (std::is_same_v<A, T>) {
    bwd_k(yp + r0 * f + b, f, xp + r0 * rs + b, xp + r0 * rs + f + b, rs, dxp + r0 * 2 * f + b,
          dxp + r0 * 2 * f + f + b, 2 * f, e - b, r1 - r0, tanh);
  } else {
    A yb[cpu::kChunk], hb[cpu::kChunk], gb[cpu::kChunk], dhb[cpu::kChunk], dgb[cpu::kChunk];
    const int64_t w = e - b, per = std::max<int64_t>(1, cpu::kChunk / w);
    for (int64_t r = r0; r < r1; r += per) {
      const int64_t n = std::min(per, r1 - r);
      cpu::convert(yp + r * f + b, yb, n * w);  // n > 1 only for whole rows, contiguous in dy
      for (int64_t i = 0; i < n; ++i) {
        cpu::convert(xp + (r + i) * rs + b, hb + i * w, w);
        cpu::convert(xp + (r + i) * rs + f + b, gb + i * w, w);
      }
      bwd_k(yb, 0, hb, gb, 0, dhb, dgb, 0, n * w, 1, tanh);
      for (int64_t i = 0; i < n; ++i) {
        cpu::convert(dhb + i * w, dxp + (r + i) * 2 * f + b, w);
        cpu::convert(dgb + i * w, dxp + (r + i) * 2 * f + f + b, w);
      }
    }
  }
}

at::Tensor geglu_cpu(const at::Tensor& x, c10::string_view approximate) {
  const GegluArgs a = check_geglu(x, approximate);
  at::Tensor out = at::empty(a.out_sizes, x.options());
  if (a.rows == 0 || a.f == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastdiff_geglu_cpu", [&] {
    const scalar_t* xp = a.x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for_each_piece(a.rows, a.f, [&](int64_t r0, int64_t r1, int64_t b, int64_t e) {
      fwd_piece(xp, a.row_stride, op, a.f, r0, r1, b, e, a.tanh);
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
    const scalar_t *xp = a.x.data_ptr<scalar_t>(), *yp = dy.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    for_each_piece(a.rows, a.f, [&](int64_t r0, int64_t r1, int64_t b, int64_t e) {
      bwd_piece(yp, xp, a.row_stride, dxp, a.f, r0, r1, b, e, a.tanh);
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
