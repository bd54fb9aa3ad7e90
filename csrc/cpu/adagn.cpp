// AdaGN (ADM §3) on CPU, forward and backward: out = act(GroupNorm(x)·(1 + scale) + shift). Math in
// fastdiff/groupnorm.h (shared with csrc/cuda/adagn.cu). x is read in place in its own layout and the output keeps
// it (adagn_checks.h): [N, C, S] (contiguous) or [N, S, C] (channels_last / channels_last_3d).
//
// [N, C, S], a group's D·S values contiguous (D = C/G):
//  - D·S <= kSplitElements: one parallel task per (sample, group) that reduces the group and then writes it while
//    its values are still in L1/L2 (one read from memory);
//  - larger groups are split: parallel tasks over (sample, group, slice of <= kSplitElements values) write Welford
//    triples, a serial pass merges each group's slices (Chan's formula) and folds the per-(sample, channel) affine
//    map once, then the output pass is parallel over (sample, channel, spatial chunk). So batch 1 at high
//    resolution uses every core whatever N·G is.
// [N, S, C]: parallel tasks over (sample, slice of positions) accumulate per-channel sums over their contiguous
// C-runs (vectorised over C) and leave one triple per group; merge and fold as above; the output pass is parallel
// over (sample, position chunk) with the per-channel coefficients as vectors. The backward has the same three
// phases (per-channel Σdz, Σdz·(x − mean) per slice; merge; dx), recomputing dz in the last pass.
// Small inputs (< cpu::kGrainElements values) run on the calling thread: waking the OpenMP team costs more.
//
// Measured (2026-12-07, AMD EPYC with AVX-512, one thread for both sides because the 2-core machine was shared,
// best of repeated runs, fp32, G = 32, GroupNorm + SiLU forward vs eager F.silu(F.group_norm(...))): contiguous
// 1x320x64x64 0.57 ms vs 1.09 ms (1.9x), 2x320x64x64 1.11 vs 2.00 (1.8x), 2x1280x8x8 0.10 vs 0.13 (1.2x),
// 1x512x128x128 24 vs 39 (1.6x; both bound by faulting in the fresh 32 MB output); channels_last 1x320x64x64
// 0.67 vs 0.90 (1.3x; before this layout 2.05, the NCHW copy), 1x512x128x128 23 vs 40 (1.7x). GroupNorm alone:
// 0.6x-1.5x of eager (torch's own kernel is memory-bound too). SiLU's exp is the polynomial below so the loops
// vectorise (with libm's expf the forward took 4x longer).
#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/sum.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "cpu_loop.h"
#include "fastdiff/adagn_checks.h"
#include "fastdiff/expf.h"
#include "fastdiff/groupnorm.h"

namespace fastdiff {
namespace {

// Independent partial sums, so reductions vectorise without reassociation (the order is fixed, whatever the ISA):
// kUnroll blocks of kLanes, i.e. four AVX-512 (eight AVX2) accumulators, enough to hide the add latency (with one,
// the statistics pass was latency-bound), folded lane-wise and then as a tree (not 64 dependent scalar adds).
constexpr int kLanes = 16;
constexpr int kUnroll = 4;

// The loop bodies below are force-inlined into the FASTDIFF_CPU_CLONES wrappers: a body that g++ finds too large to
// inline would be compiled once for the baseline ISA and merely jumped to from every clone.
#define FASTDIFF_LOOP inline __attribute__((always_inline))
constexpr int kBlock = kLanes * kUnroll;

template <typename A>
struct Lanes {
  A v[kUnroll][kLanes] = {};
  FASTDIFF_LOOP A total() {
    for (int u = 1; u < kUnroll; ++u)
      for (int k = 0; k < kLanes; ++k) v[0][k] += v[u][k];
    for (int w = kLanes / 2; w > 0; w /= 2)
      for (int k = 0; k < w; ++k) v[0][k] += v[0][k + w];
    return v[0][0];
  }
};

// Groups with more values than this are reduced by parallel slices of at most this many values ([N, C, S]).
// fastdiff/ops/adagn.py mirrors it as CPU_SPLIT_ELEMENTS.
constexpr int64_t kSplitElements = 4096;
// [N, S, C] position slices hold about this many values (fp32: 128 KiB, in L2 for the slice's second pass), and
// there are at most kMaxSlices per sample: the serial merge combines N·slices·G triples (with 4096-value slices it
// took a quarter of the time of a 1 x 320 x 64 x 64 forward).
constexpr int64_t kSliceElementsCl = 32768;
constexpr int64_t kMaxSlices = 256;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// exp's argument clamp [-87, 88], as values the optimiser cannot see: with literal bounds g++ threads the two
// clamped ranges (where exp is a constant) into separate masked copies of the whole SiLU, three divisions a vector
// instead of one (perf annotate of the AVX-512 clone: the divisions were 85% of the forward's time).
struct ExpClamp {
  float lo, hi;
};
inline ExpClamp exp_clamp() {
  float lo = -87.0f, hi = 88.0f;
#if defined(__GNUC__) && defined(__x86_64__)
  asm("" : "+x"(lo), "+x"(hi));
#endif
  return {lo, hi};
}

// e^v (fastdiff/expf.h) on v clamped to [c.lo, c.hi]; double uses std::exp (fp64 is the checking path, not the
// fast one).
FASTDIFF_LOOP float exp_vec(float v, ExpClamp c) { return expf_poly(std::min(std::max(v, c.lo), c.hi)); }
inline double exp_vec(double v, ExpClamp) { return std::exp(v); }

template <typename A, bool SILU>
FASTDIFF_LOOP A act(A z, ExpClamp c) { return SILU ? z / (A(1) + exp_vec(-z, c)) : z; }

// dz = grad·act'(z).
template <typename A, bool SILU>
FASTDIFF_LOOP A act_grad(A go, A z, ExpClamp c) {
  if constexpr (SILU) {
    const A sig = A(1) / (A(1) + exp_vec(-z, c));
    return go * gn::silu_grad_from_sigmoid(z, sig);
  } else {
    return go;
  }
}

// ------------------------------------------------------------------ [N, C, S]: runs of one channel

// Welford triple of v[0, len): two passes over the (L1-resident) chunk.
template <typename A>
FASTDIFF_LOOP gn::Welford<A> chunk_stats(const A* v, int64_t len) {
  Lanes<A> acc;
  int64_t j = 0;
  for (; j + kBlock <= len; j += kBlock)
    for (int u = 0; u < kUnroll; ++u)
      for (int k = 0; k < kLanes; ++k) acc.v[u][k] += v[j + u * kLanes + k];
  A sum = 0;
  for (; j < len; ++j) sum += v[j];
  sum += acc.total();
  const A mean = sum / static_cast<A>(len);
  Lanes<A> sq;
  j = 0;
  for (; j + kBlock <= len; j += kBlock)
    for (int u = 0; u < kUnroll; ++u)
      for (int k = 0; k < kLanes; ++k) {
        const A d = v[j + u * kLanes + k] - mean;
        sq.v[u][k] += d * d;
      }
  A m2 = 0;
  for (; j < len; ++j) m2 += (v[j] - mean) * (v[j] - mean);
  m2 += sq.total();
  return {static_cast<A>(len), mean, m2};
}

template <typename A, bool SILU>
FASTDIFF_LOOP void affine_act(const A* x, A* out, int64_t len, gn::Affine<A> f) {
  const ExpClamp ec = exp_clamp();
  for (int64_t j = 0; j < len; ++j) out[j] = act<A, SILU>(gn::apply(f, x[j]), ec);
}

// dz = grad·act'(z) into dz with z = a·(x - mean) + b; returns Σ dz and Σ dz·(x - mean) through sdz, sdzx.
template <typename A, bool SILU>
FASTDIFF_LOOP void dz_sums(const A* go, const A* x, A* dz, int64_t len, gn::Affine<A> f, A& sdz, A& sdzx) {
  const ExpClamp ec = exp_clamp();
  Lanes<A> s1, s2;
  auto one = [&](int64_t j) {
    const A d = act_grad<A, SILU>(go[j], gn::apply(f, x[j]), ec);
    dz[j] = d;
    return d;
  };
  int64_t j = 0;
  for (; j + kBlock <= len; j += kBlock)
    for (int u = 0; u < kUnroll; ++u)
      for (int k = 0; k < kLanes; ++k) {
        const int64_t i = j + u * kLanes + k;
        const A d = one(i);
        s1.v[u][k] += d;
        s2.v[u][k] += d * (x[i] - f.mean);
      }
  for (; j < len; ++j) {
    const A d = one(j);
    sdz += d;
    sdzx += d * (x[j] - f.mean);
  }
  sdz += s1.total();
  sdzx += s2.total();
}

template <typename A>
FASTDIFF_LOOP void dx_apply(const A* dz, const A* x, A* dx, int64_t len, gn::DxAffine<A> c) {
  for (int64_t j = 0; j < len; ++j) dx[j] = gn::apply(c, dz[j], x[j]);
}

// ------------------------------------------------------------------ [N, S, C]: rows of channels
// x holds `rows` rows of `cl` channels (row stride cl); the per-channel vectors (m = the group mean of the channel,
// a, b of groupnorm.h's Affine, sums) start at the block's first channel. Pointers are restrict: without it g++
// left the SiLU backward's row loop scalar (aliasing between the sums and the inputs).
template <typename A>
using In = const A* __restrict__;
template <typename A>
using Out = A* __restrict__;

template <typename A>
FASTDIFF_LOOP void add_rows(In<A> x, int64_t rows, int64_t cl, Out<A> sum) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cl; ++j) sum[j] += x[r * cl + j];
}

template <typename A>
FASTDIFF_LOOP void sqdev_rows(In<A> x, int64_t rows, int64_t cl, In<A> m, Out<A> sq) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cl; ++j) {
      const A d = x[r * cl + j] - m[j];
      sq[j] += d * d;
    }
}

template <typename A, bool SILU>
FASTDIFF_LOOP void affine_rows(In<A> x, int64_t rows, int64_t cl, In<A> m, In<A> a, In<A> b, Out<A> out) {
  const ExpClamp ec = exp_clamp();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cl; ++j)
      out[r * cl + j] = act<A, SILU>(gn::apply(gn::Affine<A>{m[j], a[j], b[j]}, x[r * cl + j]), ec);
}

template <typename A, bool SILU>
FASTDIFF_LOOP void dz_rows(In<A> go, In<A> x, int64_t rows, int64_t cl, In<A> m, In<A> a, In<A> b, Out<A> sdz,
                           Out<A> sdzx) {
  const ExpClamp ec = exp_clamp();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cl; ++j) {
      const A xv = x[r * cl + j];
      const A d = act_grad<A, SILU>(go[r * cl + j], gn::apply(gn::Affine<A>{m[j], a[j], b[j]}, xv), ec);
      sdz[j] += d;
      sdzx[j] += d * (xv - m[j]);
    }
}

// dx = gn::apply(DxAffine, dz, x) with the per-channel (rstd, k, q, r) of groupnorm.h's dx_affine.
template <typename A, bool SILU>
FASTDIFF_LOOP void dx_rows(In<A> go, In<A> x, int64_t rows, int64_t cl, In<A> m, In<A> a, In<A> b, In<A> rs, In<A> k,
                           In<A> q, In<A> rr, Out<A> dx) {
  const ExpClamp ec = exp_clamp();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cl; ++j) {
      const A xv = x[r * cl + j];
      const A d = act_grad<A, SILU>(go[r * cl + j], gn::apply(gn::Affine<A>{m[j], a[j], b[j]}, xv), ec);
      dx[r * cl + j] = gn::apply(gn::DxAffine<A>{m[j], rs[j], k[j], q[j], rr[j]}, d, xv);
    }
}

// The float instantiations, compiled also for AVX2 / AVX-512 (picked at load time).
FASTDIFF_CPU_CLONES gn::Welford<float> chunk_stats_f(const float* v, int64_t len) { return chunk_stats(v, len); }
FASTDIFF_CPU_CLONES void affine_silu_f(const float* x, float* o, int64_t len, gn::Affine<float> f) {
  affine_act<float, true>(x, o, len, f);
}
FASTDIFF_CPU_CLONES void affine_none_f(const float* x, float* o, int64_t len, gn::Affine<float> f) {
  affine_act<float, false>(x, o, len, f);
}
FASTDIFF_CPU_CLONES void dz_silu_f(const float* go, const float* x, float* dz, int64_t len, gn::Affine<float> f,
                                   float& s, float& sx) {
  dz_sums<float, true>(go, x, dz, len, f, s, sx);
}
FASTDIFF_CPU_CLONES void dz_none_f(const float* go, const float* x, float* dz, int64_t len, gn::Affine<float> f,
                                   float& s, float& sx) {
  dz_sums<float, false>(go, x, dz, len, f, s, sx);
}
FASTDIFF_CPU_CLONES void dx_apply_f(const float* dz, const float* x, float* dx, int64_t len, gn::DxAffine<float> c) {
  dx_apply(dz, x, dx, len, c);
}
using InF = In<float>;
using OutF = Out<float>;
FASTDIFF_CPU_CLONES void add_rows_f(InF x, int64_t rows, int64_t cl, OutF sum) { add_rows(x, rows, cl, sum); }
FASTDIFF_CPU_CLONES void sqdev_rows_f(InF x, int64_t rows, int64_t cl, InF m, OutF sq) {
  sqdev_rows(x, rows, cl, m, sq);
}
FASTDIFF_CPU_CLONES void affine_rows_silu_f(InF x, int64_t rows, int64_t cl, InF m, InF a, InF b, OutF out) {
  affine_rows<float, true>(x, rows, cl, m, a, b, out);
}
FASTDIFF_CPU_CLONES void affine_rows_none_f(InF x, int64_t rows, int64_t cl, InF m, InF a, InF b, OutF out) {
  affine_rows<float, false>(x, rows, cl, m, a, b, out);
}
FASTDIFF_CPU_CLONES void dz_rows_silu_f(InF go, InF x, int64_t rows, int64_t cl, InF m, InF a, InF b, OutF sdz,
                                        OutF sdzx) {
  dz_rows<float, true>(go, x, rows, cl, m, a, b, sdz, sdzx);
}
FASTDIFF_CPU_CLONES void dz_rows_none_f(InF go, InF x, int64_t rows, int64_t cl, InF m, InF a, InF b, OutF sdz,
                                        OutF sdzx) {
  dz_rows<float, false>(go, x, rows, cl, m, a, b, sdz, sdzx);
}
FASTDIFF_CPU_CLONES void dx_rows_silu_f(InF go, InF x, int64_t rows, int64_t cl, InF m, InF a, InF b, InF rs, InF k,
                                        InF q, InF rr, OutF dx) {
  dx_rows<float, true>(go, x, rows, cl, m, a, b, rs, k, q, rr, dx);
}
FASTDIFF_CPU_CLONES void dx_rows_none_f(InF go, InF x, int64_t rows, int64_t cl, InF m, InF a, InF b, InF rs, InF k,
                                        InF q, InF rr, OutF dx) {
  dx_rows<float, false>(go, x, rows, cl, m, a, b, rs, k, q, rr, dx);
}

gn::Welford<float> stats_k(const float* v, int64_t len) { return chunk_stats_f(v, len); }
gn::Welford<double> stats_k(const double* v, int64_t len) { return chunk_stats(v, len); }
void affine_k(const float* x, float* o, int64_t len, gn::Affine<float> f, bool silu) {
  silu ? affine_silu_f(x, o, len, f) : affine_none_f(x, o, len, f);
}
void affine_k(const double* x, double* o, int64_t len, gn::Affine<double> f, bool silu) {
  silu ? affine_act<double, true>(x, o, len, f) : affine_act<double, false>(x, o, len, f);
}
void dz_k(const float* go, const float* x, float* dz, int64_t len, gn::Affine<float> f, bool silu, float& s, float& sx) {
  silu ? dz_silu_f(go, x, dz, len, f, s, sx) : dz_none_f(go, x, dz, len, f, s, sx);
}
void dz_k(const double* go, const double* x, double* dz, int64_t len, gn::Affine<double> f, bool silu, double& s,
          double& sx) {
  silu ? dz_sums<double, true>(go, x, dz, len, f, s, sx) : dz_sums<double, false>(go, x, dz, len, f, s, sx);
}
void dx_k(const float* dz, const float* x, float* dx, int64_t len, gn::DxAffine<float> c) {
  dx_apply_f(dz, x, dx, len, c);
}
void dx_k(const double* dz, const double* x, double* dx, int64_t len, gn::DxAffine<double> c) {
  dx_apply(dz, x, dx, len, c);
}
void add_rows_k(const float* x, int64_t rows, int64_t cl, float* sum) { add_rows_f(x, rows, cl, sum); }
void add_rows_k(const double* x, int64_t rows, int64_t cl, double* sum) { add_rows(x, rows, cl, sum); }
void sqdev_rows_k(const float* x, int64_t rows, int64_t cl, const float* m, float* sq) {
  sqdev_rows_f(x, rows, cl, m, sq);
}
void sqdev_rows_k(const double* x, int64_t rows, int64_t cl, const double* m, double* sq) {
  sqdev_rows(x, rows, cl, m, sq);
}
void affine_rows_k(const float* x, int64_t rows, int64_t cl, const float* m, const float* a, const float* b,
                   float* out, bool silu) {
  silu ? affine_rows_silu_f(x, rows, cl, m, a, b, out) : affine_rows_none_f(x, rows, cl, m, a, b, out);
}
void affine_rows_k(const double* x, int64_t rows, int64_t cl, const double* m, const double* a, const double* b,
                   double* out, bool silu) {
  silu ? affine_rows<double, true>(x, rows, cl, m, a, b, out) : affine_rows<double, false>(x, rows, cl, m, a, b, out);
}
void dz_rows_k(const float* go, const float* x, int64_t rows, int64_t cl, const float* m, const float* a,
               const float* b, float* sdz, float* sdzx, bool silu) {
  silu ? dz_rows_silu_f(go, x, rows, cl, m, a, b, sdz, sdzx) : dz_rows_none_f(go, x, rows, cl, m, a, b, sdz, sdzx);
}
void dz_rows_k(const double* go, const double* x, int64_t rows, int64_t cl, const double* m, const double* a,
               const double* b, double* sdz, double* sdzx, bool silu) {
  silu ? dz_rows<double, true>(go, x, rows, cl, m, a, b, sdz, sdzx)
       : dz_rows<double, false>(go, x, rows, cl, m, a, b, sdz, sdzx);
}
void dx_rows_k(const float* go, const float* x, int64_t rows, int64_t cl, const float* m, const float* a,
               const float* b, const float* rs, const float* k, const float* q, const float* rr, float* dx,
               bool silu) {
  silu ? dx_rows_silu_f(go, x, rows, cl, m, a, b, rs, k, q, rr, dx)
       : dx_rows_none_f(go, x, rows, cl, m, a, b, rs, k, q, rr, dx);
}
void dx_rows_k(const double* go, const double* x, int64_t rows, int64_t cl, const double* m, const double* a,
               const double* b, const double* rs, const double* k, const double* q, const double* rr, double* dx,
               bool silu) {
  silu ? dx_rows<double, true>(go, x, rows, cl, m, a, b, rs, k, q, rr, dx)
       : dx_rows<double, false>(go, x, rows, cl, m, a, b, rs, k, q, rr, dx);
}

template <typename A>
A param(const A* p, int64_t i) { return p != nullptr ? p[i] : A(0); }

// f(block, rows, c0, cl) over positions [p0, p1) of sample n of an [N, S, C] tensor, as blocks of `rows` rows of
// cl channels starting at channel c0, read as A: the tensor's memory when T is A (one block), else converted
// through buf (kChunk values) a few whole rows at a time, or a row in kChunk pieces when C > kChunk.
template <typename A, typename T, typename F>
void for_rows(const T* base, int64_t p0, int64_t p1, int64_t c, A* buf, const F& f) {
  if constexpr (std::is_same_v<A, T>) {
    f(base + p0 * c, p1 - p0, int64_t(0), c);
  } else if (c <= cpu::kChunk) {
    const int64_t per = cpu::kChunk / c;
    for (int64_t p = p0; p < p1; p += per) {
      const int64_t rows = std::min(per, p1 - p);
      f(cpu::load(base + p * c, buf, rows * c), rows, int64_t(0), c);
    }
  } else {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t c0 = 0; c0 < c; c0 += cpu::kChunk) {
        const int64_t l = std::min(cpu::kChunk, c - c0);
        f(cpu::load(base + p * c + c0, buf, l), int64_t(1), c0, l);
      }
  }
}

// Per-(sample, channel) vectors of the forward's affine map (groupnorm.h): m (the channel's group mean), a, b.
template <typename A>
struct ChannelMaps {
  std::vector<A> m, a, b;
  explicit ChannelMaps(int64_t nc) : m(nc), a(nc), b(nc) {}
  void set(int64_t nc, gn::Affine<A> f) {
    m[nc] = f.mean;
    a[nc] = f.a;
    b[nc] = f.b;
  }
};

struct Params {
  int64_t n, c, g, s;
};

// Merge slices per (sample, group): part[(n·slices + k)·G + g] ([N, S, C]) or part[(n·G + g)·slices + k]
// ([N, C, S]); writes mean / rstd and calls fold(nc, affine) for every channel.
template <typename A, typename F>
void merge_slices(const std::vector<gn::Welford<A>>& part, int64_t slices, bool slice_major, const Params& p, A eps,
                  const A* gp, const A* bp, const A* sp, const A* hp, A* mp, A* rp, const F& fold) {
  const int64_t d = p.c / p.g;
  for (int64_t n = 0; n < p.n; ++n)
    for (int64_t g = 0; g < p.g; ++g) {
      gn::Welford<A> w{0, 0, 0};
      for (int64_t k = 0; k < slices; ++k)
        w = gn::combine(w, part[slice_major ? (n * slices + k) * p.g + g : (n * p.g + g) * slices + k]);
      const A r = w.count > A(0) ? gn::rstd(w, eps) : A(1) / std::sqrt(eps);
      mp[n * p.g + g] = w.count > A(0) ? w.mean : A(0);
      rp[n * p.g + g] = r;
      for (int64_t c = g * d; c < (g + 1) * d; ++c) {
        const int64_t nc = n * p.c + c;
        fold(nc, gn::channel_affine(w.mean, r, gp[c], bp[c], param(sp, nc), param(hp, nc)));
      }
    }
}

template <typename T, typename A>
void forward_ncs(const T* xp, T* op, const A* gp, const A* bp, const A* sp, const A* hp, A* mp, A* rp,
                 const Params& p, A e, bool silu) {
  const int64_t d = p.c / p.g, s = p.s, len = d * s;
  if (len <= kSplitElements) {
    // One task per (sample, group): reduce, then write while the group is in cache.
    at::parallel_for(0, p.n * p.g, std::max<int64_t>(1, cpu::kGrainElements / std::max<int64_t>(len, 1)),
                     [&](int64_t begin, int64_t end) {
      A buf[cpu::kBuf<A, T>], obuf[cpu::kBuf<A, T>];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / p.g, g = task % p.g;
        const T* gx = xp + task * len;  // group g of sample n: channels g·d .. g·d + d - 1, contiguous
        gn::Welford<A> w{0, 0, 0};
        for (int64_t b = 0; b < len; b += cpu::kChunk) {
          const int64_t l = std::min(cpu::kChunk, len - b);
          w = gn::combine(w, stats_k(cpu::load(gx + b, buf, l), l));
        }
        const A r = len > 0 ? gn::rstd(w, e) : A(1) / std::sqrt(e);
        mp[task] = len > 0 ? w.mean : A(0);
        rp[task] = r;
        for (int64_t ci = 0; ci < d; ++ci) {
          const int64_t c = g * d + ci, nc = n * p.c + c;
          const gn::Affine<A> f = gn::channel_affine(w.mean, r, gp[c], bp[c], param(sp, nc), param(hp, nc));
          for (int64_t b = 0; b < s; b += cpu::kChunk) {
            const int64_t l = std::min(cpu::kChunk, s - b), i = nc * s + b;
            A* o = cpu::out_buf(op + i, obuf);
            affine_k(cpu::load(xp + i, buf, l), o, l, f, silu);
            cpu::store(o, op + i, l);
          }
        }
      }
    });
    return;
  }
  // Split: slices of <= kSplitElements values of each group, in parallel.
  const int64_t slices = ceil_div(len, kSplitElements), slice = ceil_div(len, slices);
  std::vector<gn::Welford<A>> part(p.n * p.g * slices);
  at::parallel_for(0, p.n * p.g * slices, std::max<int64_t>(1, cpu::kGrainElements / slice),
                   [&](int64_t begin, int64_t end) {
    A buf[cpu::kBuf<A, T>];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / slices, k = task % slices;
      const int64_t b0 = k * slice, b1 = std::min(len, b0 + slice);
      const T* gx = xp + row * len;
      gn::Welford<A> w{0, 0, 0};
      for (int64_t b = b0; b < b1; b += cpu::kChunk) {
        const int64_t l = std::min(cpu::kChunk, b1 - b);
        w = gn::combine(w, stats_k(cpu::load(gx + b, buf, l), l));
      }
      part[task] = w;
    }
  });
  std::vector<gn::Affine<A>> maps(p.n * p.c);
  merge_slices(part, slices, false, p, e, gp, bp, sp, hp, mp, rp,
               [&](int64_t nc, gn::Affine<A> f) { maps[nc] = f; });
  cpu::for_each_row_chunk(p.n * p.c, s, [&](int64_t nc, int64_t b, int64_t end) {
    A buf[cpu::kBuf<A, T>], obuf[cpu::kBuf<A, T>];
    const int64_t l = end - b, i = nc * s + b;
    A* o = cpu::out_buf(op + i, obuf);
    affine_k(cpu::load(xp + i, buf, l), o, l, maps[nc], silu);
    cpu::store(o, op + i, l);
  });
}

// Position slices of [N, S, C]: `per` positions each, `slices` per sample.
struct RowSlices {
  int64_t per, slices;
};

RowSlices row_slices(const Params& p) {
  int64_t per = std::max<int64_t>(1, ceil_div(kSliceElementsCl, std::max<int64_t>(p.c, 1)));
  per = std::max(per, ceil_div(p.s, kMaxSlices));
  return {per, ceil_div(p.s, per)};
}

// Rows (positions of all samples) per parallel work item of a pass over [N, S, C].
int64_t row_grain(const Params& p) { return std::max<int64_t>(1, cpu::kGrainElements / std::max<int64_t>(p.c, 1)); }

template <typename T, typename A>
void forward_nsc(const T* xp, T* op, const A* gp, const A* bp, const A* sp, const A* hp, A* mp, A* rp,
                 const Params& p, A e, bool silu) {
  const int64_t d = p.c / p.g;
  const RowSlices rs = row_slices(p);
  std::vector<gn::Welford<A>> part(p.n * rs.slices * p.g);
  const int64_t slice_values = std::min(rs.per, p.s) * p.c;
  at::parallel_for(0, p.n * rs.slices, std::max<int64_t>(1, cpu::kGrainElements / slice_values),
                   [&](int64_t begin, int64_t end) {
    A buf[cpu::kBuf<A, T>];
    std::vector<A> sum(p.c), sq(p.c), gm(p.c);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / rs.slices, k = task % rs.slices;
      const int64_t p0 = k * rs.per, p1 = std::min(p.s, p0 + rs.per);
      const T* base = xp + n * p.s * p.c;
      const A count = static_cast<A>((p1 - p0) * d);
      std::fill(sum.begin(), sum.end(), A(0));
      std::fill(sq.begin(), sq.end(), A(0));
      for_rows<A>(base, p0, p1, p.c, buf,
                  [&](const A* v, int64_t rows, int64_t c0, int64_t cl) { add_rows_k(v, rows, cl, sum.data() + c0); });
      for (int64_t g = 0; g < p.g; ++g) {  // the slice's own group means, so the squares are centred
        A t = 0;
        for (int64_t c = g * d; c < (g + 1) * d; ++c) t += sum[c];
        std::fill(gm.begin() + g * d, gm.begin() + (g + 1) * d, t / count);
      }
      for_rows<A>(base, p0, p1, p.c, buf, [&](const A* v, int64_t rows, int64_t c0, int64_t cl) {
        sqdev_rows_k(v, rows, cl, gm.data() + c0, sq.data() + c0);
      });
      for (int64_t g = 0; g < p.g; ++g) {
        A m2 = 0;
        for (int64_t c = g * d; c < (g + 1) * d; ++c) m2 += sq[c];
        part[task * p.g + g] = {count, gm[g * d], m2};
      }
    }
  });
  ChannelMaps<A> maps(p.n * p.c);
  merge_slices(part, rs.slices, true, p, e, gp, bp, sp, hp, mp, rp,
               [&](int64_t nc, gn::Affine<A> f) { maps.set(nc, f); });
  at::parallel_for(0, p.n * p.s, row_grain(p), [&](int64_t begin, int64_t end) {
    A buf[cpu::kBuf<A, T>], obuf[cpu::kBuf<A, T>];
    // whole samples' row ranges, so each block shares one sample's vectors
    for (int64_t r0 = begin; r0 < end;) {
      const int64_t n = r0 / p.s, r1 = std::min(end, (n + 1) * p.s);
      const T* base = xp + n * p.s * p.c;
      T* obase = op + n * p.s * p.c;
      const int64_t off = n * p.c;
      int64_t row = r0 - n * p.s;
      for_rows<A>(base, r0 - n * p.s, r1 - n * p.s, p.c, buf, [&](const A* v, int64_t rows, int64_t c0, int64_t cl) {
        T* dst = obase + row * p.c + c0;
        A* o = cpu::out_buf(dst, obuf);
        affine_rows_k(v, rows, cl, maps.m.data() + off + c0, maps.a.data() + off + c0, maps.b.data() + off + c0, o,
                      silu);
        cpu::store(o, dst, rows * cl);
        if (c0 + cl == p.c) row += rows;
      });
      r0 = r1;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adagn_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                         const at::Tensor& bias,
                                                         const c10::optional<at::Tensor>& scale,
                                                         const c10::optional<at::Tensor>& shift, int64_t num_groups,
                                                         double eps, bool silu) {
  const AdaGNArgs a = check_adagn(x, weight, bias, scale, shift, num_groups, eps);
  const at::ScalarType acc = acc_type(x.scalar_type());
  at::Tensor out = adagn_empty_like_x(a, x.scalar_type());
  at::Tensor mean = at::empty({a.n, a.g}, x.options().dtype(acc));
  at::Tensor rstd = at::empty({a.n, a.g}, x.options().dtype(acc));
  if (a.n == 0 || a.c == 0) return {out, mean, rstd};
  const Params p{a.n, a.c, a.g, a.s};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "fastdiff_adagn_cpu", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const A *gp = a.gamma.data_ptr<A>(), *bp = a.beta.data_ptr<A>();
    const A *sp = cpu::ptr_or_null<A>(a.scale), *hp = cpu::ptr_or_null<A>(a.shift);
    (a.channels_last ? forward_nsc<T, A> : forward_ncs<T, A>)(a.x.data_ptr<T>(), out.data_ptr<T>(), gp, bp, sp, hp,
                                                             mean.data_ptr<A>(), rstd.data_ptr<A>(), p,
                                                             static_cast<A>(eps), silu);
  });
  return {out, mean, rstd};
}

// [N, C, S] backward: one task per (sample, group); dz kept for the dx pass.
template <typename T, typename A>
void backward_ncs(const T* gop, const T* xp, T* dxp, const A* gp, const A* bp, const A* sp, const A* hp, const A* mp,
                  const A* rp, A* dsp, A* dhp, A* dgp, A* dbp, const Params& p, bool silu) {
  const int64_t d = p.c / p.g, s = p.s, len = d * s;
  at::parallel_for(0, p.n * p.g, std::max<int64_t>(1, cpu::kGrainElements / std::max<int64_t>(len, 1)),
                   [&](int64_t begin, int64_t end) {
    A xb[cpu::kBuf<A, T>], gb[cpu::kBuf<A, T>], ob[cpu::kBuf<A, T>];
    std::vector<A> dz(len);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / p.g, g = task % p.g;
      const A m = mp[task], r = rp[task];
      A sum_dxhat = 0, sum_dxhat_xhat = 0;
      for (int64_t ci = 0; ci < d; ++ci) {
        const int64_t c = g * d + ci, nc = n * p.c + c;
        const A sc = param(sp, nc);
        const gn::Affine<A> f = gn::channel_affine(m, r, gp[c], bp[c], sc, param(hp, nc));
        A sdz = 0, sdzx = 0;
        for (int64_t b = 0; b < s; b += cpu::kChunk) {
          const int64_t l = std::min(cpu::kChunk, s - b), i = nc * s + b;
          dz_k(cpu::load(gop + i, gb, l), cpu::load(xp + i, xb, l), dz.data() + ci * s + b, l, f, silu, sdz, sdzx);
        }
        const gn::ChannelGrads<A> cg = gn::channel_grads(sdz, sdzx, r, gp[c], bp[c], sc);
        dsp[nc] = cg.scale;
        dhp[nc] = cg.shift;
        dgp[nc] = cg.gamma;
        dbp[nc] = cg.beta;
        const A k = gn::group_k(gp[c], sc);
        sum_dxhat += k * sdz;
        sum_dxhat_xhat += k * r * sdzx;
      }
      for (int64_t ci = 0; ci < d; ++ci) {
        const int64_t c = g * d + ci, nc = n * p.c + c;
        const gn::DxAffine<A> da =
            gn::dx_affine(gn::group_k(gp[c], param(sp, nc)), m, r, sum_dxhat, sum_dxhat_xhat, static_cast<A>(len));
        for (int64_t b = 0; b < s; b += cpu::kChunk) {
          const int64_t l = std::min(cpu::kChunk, s - b), i = nc * s + b;
          A* o = cpu::out_buf(dxp + i, ob);
          dx_k(dz.data() + ci * s + b, cpu::load(xp + i, xb, l), o, l, da);
          cpu::store(o, dxp + i, l);
        }
      }
    }
  });
}

// [N, S, C] backward: per-slice per-channel Σdz, Σdz·(x − mean); merge; dx (dz recomputed).
template <typename T, typename A>
void backward_nsc(const T* gop, const T* xp, T* dxp, const A* gp, const A* bp, const A* sp, const A* hp, const A* mp,
                  const A* rp, A* dsp, A* dhp, A* dgp, A* dbp, const Params& p, bool silu) {
  const int64_t d = p.c / p.g, nc_total = p.n * p.c;
  const RowSlices rs = row_slices(p);
  ChannelMaps<A> maps(nc_total);
  for (int64_t nc = 0; nc < nc_total; ++nc) {
    const int64_t n = nc / p.c, c = nc % p.c, row = n * p.g + c / d;
    maps.set(nc, gn::channel_affine(mp[row], rp[row], gp[c], bp[c], param(sp, nc), param(hp, nc)));
  }
  std::vector<A> part(p.n * rs.slices * 2 * p.c);  // [N, slices, 2, C]
  const int64_t slice_values = std::min(rs.per, p.s) * p.c;
  at::parallel_for(0, p.n * rs.slices, std::max<int64_t>(1, cpu::kGrainElements / slice_values),
                   [&](int64_t begin, int64_t end) {
    A xb[cpu::kBuf<A, T>], gb[cpu::kBuf<A, T>];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / rs.slices, k = task % rs.slices;
      const int64_t p0 = k * rs.per, p1 = std::min(p.s, p0 + rs.per), off = n * p.c;
      A* sdz = part.data() + task * 2 * p.c;
      A* sdzx = sdz + p.c;
      std::fill(sdz, sdz + 2 * p.c, A(0));
      const T* gbase = gop + n * p.s * p.c;
      int64_t row = p0;
      for_rows<A>(xp + n * p.s * p.c, p0, p1, p.c, xb, [&](const A* v, int64_t rows, int64_t c0, int64_t cl) {
        const A* go = cpu::load(gbase + row * p.c + c0, gb, rows * cl);
        dz_rows_k(go, v, rows, cl, maps.m.data() + off + c0, maps.a.data() + off + c0, maps.b.data() + off + c0,
                  sdz + c0, sdzx + c0, silu);
        if (c0 + cl == p.c) row += rows;
      });
    }
  });
  // Merge: channel sums, channel grads, the group's coupling sums, then dx's per-channel map.
  std::vector<A> rsv(nc_total), kv(nc_total), qv(nc_total), rv(nc_total);
  for (int64_t n = 0; n < p.n; ++n) {
    for (int64_t g = 0; g < p.g; ++g) {
      const int64_t row = n * p.g + g;
      const A m = mp[row], r = rp[row];
      A sum_dxhat = 0, sum_dxhat_xhat = 0;
      for (int64_t c = g * d; c < (g + 1) * d; ++c) {
        const int64_t nc = n * p.c + c;
        A sdz = 0, sdzx = 0;
        for (int64_t k = 0; k < rs.slices; ++k) {
          const A* pk = part.data() + (n * rs.slices + k) * 2 * p.c;
          sdz += pk[c];
          sdzx += pk[p.c + c];
        }
        const A sc = param(sp, nc);
        const gn::ChannelGrads<A> cg = gn::channel_grads(sdz, sdzx, r, gp[c], bp[c], sc);
        dsp[nc] = cg.scale;
        dhp[nc] = cg.shift;
        dgp[nc] = cg.gamma;
        dbp[nc] = cg.beta;
        const A k = gn::group_k(gp[c], sc);
        sum_dxhat += k * sdz;
        sum_dxhat_xhat += k * r * sdzx;
      }
      for (int64_t c = g * d; c < (g + 1) * d; ++c) {
        const int64_t nc = n * p.c + c;
        const gn::DxAffine<A> da = gn::dx_affine(gn::group_k(gp[c], param(sp, nc)), m, r, sum_dxhat, sum_dxhat_xhat,
                                                 static_cast<A>(d * p.s));
        rsv[nc] = da.rstd;
        kv[nc] = da.k;
        qv[nc] = da.q;
        rv[nc] = da.r;
      }
    }
  }
  at::parallel_for(0, p.n * p.s, row_grain(p), [&](int64_t begin, int64_t end) {
    A xb[cpu::kBuf<A, T>], gb[cpu::kBuf<A, T>], ob[cpu::kBuf<A, T>];
    for (int64_t r0 = begin; r0 < end;) {
      const int64_t n = r0 / p.s, r1 = std::min(end, (n + 1) * p.s), off = n * p.c;
      const int64_t base = n * p.s * p.c;
      int64_t row = r0 - n * p.s;
      const auto block = [&](const A* v, int64_t rows, int64_t c0, int64_t cl) {
        const int64_t i = base + row * p.c + c0;
        const A* go = cpu::load(gop + i, gb, rows * cl);
        A* o = cpu::out_buf(dxp + i, ob);
        dx_rows_k(go, v, rows, cl, maps.m.data() + off + c0, maps.a.data() + off + c0, maps.b.data() + off + c0,
                  rsv.data() + off + c0, kv.data() + off + c0, qv.data() + off + c0, rv.data() + off + c0, o, silu);
        cpu::store(o, dxp + i, rows * cl);
        if (c0 + cl == p.c) row += rows;
      };
      for_rows<A>(xp + base, r0 - n * p.s, r1 - n * p.s, p.c, xb, block);
      r0 = r1;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> adagn_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift, const at::Tensor& mean,
    const at::Tensor& rstd, int64_t num_groups, bool silu) {
  const AdaGNArgs a = check_adagn(x, weight, bias, scale, shift, num_groups, 1.0);
  check_float("grad_out", grad_out, &x);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), "grad_out must have x's shape ", x.sizes(), ", got ", grad_out.sizes());
  check_adagn_stats(a, mean, rstd);
  const at::ScalarType acc = acc_type(x.scalar_type());
  const at::Tensor go = adagn_like_layout(a, grad_out), mc = mean.contiguous(), rc = rstd.contiguous();
  at::Tensor dx = adagn_empty_like_x(a, x.scalar_type());
  const auto nc_opts = x.options().dtype(acc);
  at::Tensor d_scale = at::empty({a.n, a.c}, nc_opts), d_shift = at::empty({a.n, a.c}, nc_opts);
  at::Tensor d_gamma = at::empty({a.n, a.c}, nc_opts), d_beta = at::empty({a.n, a.c}, nc_opts);
  if (a.n > 0 && a.c > 0) {
    const Params p{a.n, a.c, a.g, a.s};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "fastdiff_adagn_backward_cpu", [&] {
      using T = scalar_t;
      using A = at::opmath_type<T>;
      const A *gp = a.gamma.data_ptr<A>(), *bp = a.beta.data_ptr<A>();
      const A *sp = cpu::ptr_or_null<A>(a.scale), *hp = cpu::ptr_or_null<A>(a.shift);
      (a.channels_last ? backward_nsc<T, A> : backward_ncs<T, A>)(
          go.data_ptr<T>(), a.x.data_ptr<T>(), dx.data_ptr<T>(), gp, bp, sp, hp, mc.data_ptr<A>(), rc.data_ptr<A>(),
          d_scale.data_ptr<A>(), d_shift.data_ptr<A>(), d_gamma.data_ptr<A>(), d_beta.data_ptr<A>(), p, silu);
    });
  }
  return {dx, d_gamma.sum(0).to(weight.scalar_type()), d_beta.sum(0).to(bias.scalar_type()),
          d_scale.to(x.scalar_type()), d_shift.to(x.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) {
  m.impl("adagn", &adagn_cpu);
  m.impl("adagn_backward", &adagn_backward_cpu);
}

}  // namespace fastdiff
