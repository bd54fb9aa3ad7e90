// adaLN modulate (DiT §3.2, adaLN-Zero) on CPU, forward and backward: h = residual + gate·x (gated form),
// out = norm(h)·(1 + scale) + shift with norm LayerNorm or RMSNorm over the last dimension D. Math in
// fastdiff/adaln.h (shared with csrc/cuda/adaln_modulate.cu). Forward: one parallel task per block of rows; each
// row (D contiguous values, L1/L2-resident) is read once from memory, its statistics taken in two passes over the
// cached row, and written once. Backward: tasks are blocks of one sample's rows, so the per-sample sums of
// ∂scale, ∂shift, ∂gate and the column sums of ∂weight, ∂bias are per-task partials reduced at the end.
// Inner loops run over accumulation-dtype rows with kLanes independent partial sums, so they vectorise without
// reassociation (as in adagn.cpp), compiled for AVX2 / AVX-512 too (FASTDIFF_CPU_CLONES).
#include <torch/library.h>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "cpu_loop.h"
#include "fastdiff/adaln.h"
#include "fastdiff/adaln_checks.h"

namespace fastdiff {
namespace {

constexpr int kLanes = 16;  // independent partial sums, so reductions vectorise without reassociation

// Σ v (SQUARE false) or Σ (v − c)² (SQUARE true) over v[0, len).
template <typename A, bool SQUARE>
inline A lane_sum(const A* v, int64_t len, A c) {
  A acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const A t = SQUARE ? (v[j + k] - c) * (v[j + k] - c) : v[j + k];
      acc[k] += t;
    }
  A s = 0;
  for (; j < len; ++j) s += SQUARE ? (v[j] - c) * (v[j] - c) : v[j];
  for (int k = 0; k < kLanes; ++k) s += acc[k];
  return s;
}

// Σ a·b over [0, len).
template <typename A>
inline A lane_dot(const A* a, const A* b, int64_t len) {
  A acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] += a[j + k] * b[j + k];
  A s = 0;
  for (; j < len; ++j) s += a[j] * b[j];
  for (int k = 0; k < kLanes; ++k) s += acc[k];
  return s;
}

// The row loops below are templates compiled also for AVX2 / AVX-512, the copy picked at load time
// (FASTDIFF_CPU_CLONES); every loop that writes takes __restrict__ pointers, so it vectorises without an alias check.

template <typename A>
FASTDIFF_CPU_CLONES void gated_row(const A* __restrict__ res, const A* __restrict__ gate, const A* __restrict__ x,
                                   A* __restrict__ h, int64_t len) {
  for (int64_t j = 0; j < len; ++j) h[j] = ln::gated(res[j], gate[j], x[j]);
}

// (mean, rstd) of a row: two passes over it (mean, then Σ(h − mean)²; rms: mean 0, Σh²).
template <typename A>
FASTDIFF_CPU_CLONES void row_stats(const A* h, int64_t d, bool rms, A eps, A& mean, A& rstd) {
  const A count = static_cast<A>(d);
  mean = rms || d == 0 ? A(0) : lane_sum<A, false>(h, d, A(0)) / count;
  rstd = ln::rstd(lane_sum<A, true>(h, d, mean), count, eps);
}

// out = modulate(h) for one row; one branch-free loop per combination of present arguments (w, b, s, sh null when
// absent; the common DiT call has scale and shift only).
template <typename A, bool W, bool B, bool S, bool SH>
FASTDIFF_CPU_CLONES void modulate_row(const A* __restrict__ h, A* __restrict__ out, int64_t d, A m, A q,
                                      const A* __restrict__ w, const A* __restrict__ b, const A* __restrict__ s,
                                      const A* __restrict__ sh) {
  for (int64_t j = 0; j < d; ++j)
    out[j] = ln::modulate_with<W, B, S, SH>(h[j], m, q, W ? w[j] : A(1), B ? b[j] : A(0), S ? s[j] : A(0),
                                            SH ? sh[j] : A(0));
}

template <typename A>
void fwd_row(const A* h, A* out, int64_t d, bool rms, A eps, const A* w, const A* b, const A* s, const A* sh,
             A& mean, A& rstd) {
  row_stats(h, d, rms, eps, mean, rstd);
  const A m = mean, q = rstd;
  cpu::with_flags(
      [&](auto fw, auto fb, auto fs, auto fsh) {
        modulate_row<A, decltype(fw)::value, decltype(fb)::value, decltype(fs)::value, decltype(fsh)::value>(
            h, out, d, m, q, w, b, s, sh);
      },
      w != nullptr, b != nullptr, s != nullptr, sh != nullptr);
}

// One row of the backward. Inputs g, h, gh (∂L/∂h from h's own use, or null), w, b, s (never null), x and gate
// (gated form, else null); scratch n, dn; outputs dh (∂L/∂h in total), dx (gated); the per-sample / column
// accumulators acc_* (null when absent or per token) and per-token gradient rows row_* (null unless per token).
template <typename A>
struct BwdRow {
  const A *g, *h, *gh, *w, *b, *s, *x, *gate;
  A mean, rstd;
  int64_t d;
  bool rms;
  A *n, *dn, *dh, *dx;
  A *acc_w, *acc_b, *acc_s, *acc_sh, *acc_gate;
  A *row_s, *row_sh, *row_gate;
};

template <typename A>
FASTDIFF_CPU_CLONES void bwd_row(const BwdRow<A>& r) {
  const int64_t d = r.d;
  const A *__restrict__ g = r.g, *__restrict__ h = r.h, *__restrict__ w = r.w, *__restrict__ b = r.b,
          *__restrict__ s = r.s;
  A *__restrict__ n = r.n, *__restrict__ dn = r.dn, *__restrict__ dh = r.dh;
  const A mean = r.mean, rstd = r.rstd;  // locals: read through `r` inside the loop they kept it scalar
  for (int64_t j = 0; j < d; ++j) {
    const ln::ElemGrads<A> e = ln::elem_grads(g[j], h[j], mean, rstd, w[j], b[j], s[j]);
    n[j] = e.n;
    dn[j] = e.dn;
  }
  if (A* __restrict__ acc = r.acc_w)
    for (int64_t j = 0; j < d; ++j) acc[j] += g[j] * (A(1) + s[j]) * n[j];
  if (A* __restrict__ acc = r.acc_b)
    for (int64_t j = 0; j < d; ++j) acc[j] += g[j] * (A(1) + s[j]);
  if (A* __restrict__ acc = r.acc_s)
    for (int64_t j = 0; j < d; ++j) acc[j] += g[j] * (n[j] * w[j] + b[j]);
  if (A* __restrict__ o = r.row_s)
    for (int64_t j = 0; j < d; ++j) o[j] = g[j] * (n[j] * w[j] + b[j]);
  if (A* __restrict__ acc = r.acc_sh)
    for (int64_t j = 0; j < d; ++j) acc[j] += g[j];
  if (A* __restrict__ o = r.row_sh)
    for (int64_t j = 0; j < d; ++j) o[j] = g[j];
  const A count = static_cast<A>(d > 0 ? d : 1);
  const A m1 = r.rms ? A(0) : lane_sum<A, false>(dn, d, A(0)) / count;
  const A m2 = lane_dot(dn, n, d) / count;
  if (const A* __restrict__ gh = r.gh) {
    for (int64_t j = 0; j < d; ++j) dh[j] = ln::dh(dn[j], n[j], rstd, m1, m2) + gh[j];
  } else {
    for (int64_t j = 0; j < d; ++j) dh[j] = ln::dh(dn[j], n[j], rstd, m1, m2);
  }
  if (r.gate == nullptr) return;
  const A *__restrict__ gate = r.gate, *__restrict__ x = r.x;
  A* __restrict__ dx = r.dx;
  for (int64_t j = 0; j < d; ++j) dx[j] = dh[j] * gate[j];
  if (A* __restrict__ acc = r.acc_gate)
    for (int64_t j = 0; j < d; ++j) acc[j] += dh[j] * x[j];
  if (A* __restrict__ o = r.row_gate)
    for (int64_t j = 0; j < d; ++j) o[j] = dh[j] * x[j];
}

// Reads rows of one optional [.., D] argument as A: the tensor's memory itself when T is A, else a converted copy
// (a per-sample row is converted once per sample, not once per token). Absent: a constant row (`fill`).
template <typename T, typename A>
class RowReader {
 public:
  RowReader(const RowView& v, int64_t d, A fill, bool null_if_absent = false)
      : base_(v.defined() ? v.t.data_ptr<T>() : nullptr), sb_(v.sb), sl_(v.sl), d_(d) {
    if ((base_ == nullptr && !null_if_absent) || (base_ != nullptr && !std::is_same_v<A, T>))
      buf_.assign(static_cast<size_t>(std::max<int64_t>(d, 1)), fill);
  }
  const A* row(int64_t b, int64_t l) {
    if (base_ == nullptr) return buf_.empty() ? nullptr : buf_.data();
    const T* p = base_ + b * sb_ + l * sl_;
    if constexpr (std::is_same_v<A, T>) {
      return p;
    } else {
      if (p != last_) cpu::convert(p, buf_.data(), d_);
      last_ = p;
      return buf_.data();
    }
  }

 private:
  const T* base_;
  int64_t sb_, sl_, d_;
  const T* last_ = nullptr;
  std::vector<A> buf_;
};

// A [D] parameter (weight, bias) as A values, or `fill` when absent.
template <typename T, typename A>
std::vector<A> param_row(const at::Tensor& p, int64_t d, A fill) {
  std::vector<A> out(static_cast<size_t>(std::max<int64_t>(d, 1)), fill);
  if (p.defined()) {
    const T* src = p.data_ptr<T>();
    for (int64_t j = 0; j < d; ++j) out[j] = static_cast<A>(src[j]);
  }
  return out;
}

// Destination of a row of A values bound for a contiguous T tensor: the memory itself when T is A, else a buffer
// flushed by done().
template <typename T, typename A>
class RowWriter {
 public:
  RowWriter(T* base, int64_t d) : base_(base), d_(d) {
    if (!std::is_same_v<A, T> && base != nullptr) buf_.resize(static_cast<size_t>(std::max<int64_t>(d, 1)));
  }
  A* row(int64_t r) {
    if (base_ == nullptr) return nullptr;
    dst_ = base_ + r * d_;
    return cpu::out_buf(dst_, buf_.data());
  }
  void done() {
    if (base_ != nullptr) cpu::store(buf_.data(), dst_, d_);
  }

 private:
  T* base_;
  T* dst_ = nullptr;
  int64_t d_;
  std::vector<A> buf_;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> adaln_modulate_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& gate, bool rms, double eps) {
  const AdaLNArgs a = check_adaln(x, scale, shift, weight, bias, residual, gate, rms, eps);
  const at::ScalarType acc = acc_type(x.scalar_type());
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor out = at::empty({a.b, a.l, a.d}, opts);
  const bool gated = a.gate.defined();
  at::Tensor h = gated ? at::empty({a.b, a.l, a.d}, opts) : at::empty({0}, opts);
  at::Tensor mean = at::empty({a.b, a.l}, x.options().dtype(acc));
  at::Tensor rstd = at::empty({a.b, a.l}, x.options().dtype(acc));
  const int64_t rows = a.b * a.l;
  if (rows == 0) return {out, h, mean, rstd};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastdiff_adaln_modulate_cpu", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const int64_t d = a.d, L = a.l;
    const std::vector<A> w = param_row<T, A>(a.weight, d, A(1)), bb = param_row<T, A>(a.bias, d, A(0));
    const A *wp = a.weight.defined() ? w.data() : nullptr, *bp = a.bias.defined() ? bb.data() : nullptr;
    T *op = out.data_ptr<T>(), *hp = gated ? h.data_ptr<T>() : nullptr;
    A *mp = mean.data_ptr<A>(), *rp = rstd.data_ptr<A>();
    const A e = static_cast<A>(eps);
    const int64_t grain = std::max<int64_t>(1, cpu::kGrainElements / std::max<int64_t>(d, 1));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      RowReader<T, A> xs(a.x, d, A(0)), ss(a.scale, d, A(0), true), shs(a.shift, d, A(0), true),
          rs(a.residual, d, A(0)), gs(a.gate, d, A(0));
      RowWriter<T, A> outs(op, d), hs(hp, d);
      std::vector<A> hbuf(gated && !std::is_same_v<A, T> ? d : 0);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t bi = r / L, li = r % L;
        const A* hv;
        if (gated) {
          A* hw = hs.row(r);
          gated_row(rs.row(bi, li), gs.row(bi, li), xs.row(bi, li), hw, d);
          hs.done();
          if constexpr (!std::is_same_v<A, T>) {  // normalise the stored (rounded) h, as the reference does
            cpu::convert(hp + r * d, hbuf.data(), d);
            hv = hbuf.data();
          } else {
            hv = hw;
          }
        } else {
          hv = xs.row(bi, li);
        }
        fwd_row(hv, outs.row(r), d, rms, e, wp, bp, ss.row(bi, li), shs.row(bi, li), mp[r], rp[r]);
        outs.done();
      }
    });
  });
  return {out, h, mean, rstd};
}

// Gradients of adaln_modulate from the saved statistics. h is the normalised input (the forward's h when gated,
// else x); x and gate are given in the gated form. Returns (∂h, ∂x, ∂gate, ∂scale, ∂shift, ∂weight, ∂bias), each
// in the storage dtype and its argument's shape; an empty [0] tensor for an absent argument (∂x: not gated).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
adaln_modulate_backward_cpu(const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_h, const at::Tensor& h,
                            const c10::optional<at::Tensor>& x, const c10::optional<at::Tensor>& gate,
                            const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                            const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                            const at::Tensor& mean, const at::Tensor& rstd, bool rms) {
  // h takes x's place and x the residual's (same [B, L, D] shape) in the shared checks.
  const AdaLNArgs a = check_adaln(h, scale, shift, weight, bias, x, gate, rms, 1.0);
  check_adaln_stats(a, mean, rstd);
  check_float("grad_out", grad_out, &h, "h");
  TORCH_CHECK(grad_out.sizes() == h.sizes(), "grad_out must have h's shape ", h.sizes(), ", got ", grad_out.sizes());
  RowView gh;
  if (grad_h.has_value() && grad_h->numel() > 0) {
    check_float("grad_h", *grad_h, &h, "h");
    TORCH_CHECK(grad_h->sizes() == h.sizes(), "grad_h must have h's shape ", h.sizes(), ", got ", grad_h->sizes());
    gh = row_view(*grad_h, true);
  }
  const RowView go = row_view(grad_out, true);
  const at::ScalarType acc = acc_type(h.scalar_type());
  const auto opts = h.options().memory_format(at::MemoryFormat::Contiguous);
  const int64_t B = a.b, L = a.l, d = a.d;
  const bool gated = a.gate.defined();
  at::Tensor d_h = at::empty({B, L, d}, opts);
  at::Tensor d_x = gated ? at::empty({B, L, d}, opts) : at::empty({0}, opts);
  // Per-token gradients are written row by row (storage dtype); per-sample ones and ∂weight, ∂bias are sums of
  // per-task partials [tasks, D] (accumulation dtype).
  auto per_token = [&](const RowView& v) { return v.defined() && v.per_token; };
  auto tok = [&](const RowView& v) { return per_token(v) ? at::empty({B, L, d}, opts) : at::Tensor(); };
  at::Tensor t_scale = tok(a.scale), t_shift = tok(a.shift), t_gate = tok(a.gate);
  const int threads = std::max(1, at::get_num_threads());
  const int64_t target_tasks = 4 * static_cast<int64_t>(threads);
  const int64_t per_sample_tasks = std::max<int64_t>(1, std::min<int64_t>(L, (target_tasks + B - 1) / std::max<int64_t>(B, 1)));
  const int64_t rows_per_task = std::max<int64_t>(1, (L + per_sample_tasks - 1) / per_sample_tasks);
  const int64_t blocks = L > 0 ? (L + rows_per_task - 1) / rows_per_task : 0;
  const int64_t tasks = B * blocks;
  auto partial = [&](bool need) {
    return need ? at::zeros({std::max<int64_t>(tasks, 1), d}, h.options().dtype(acc)) : at::Tensor();
  };
  const bool sample_scale = a.scale.defined() && !a.scale.per_token, sample_shift = a.shift.defined() && !a.shift.per_token,
             sample_gate = gated && !a.gate.per_token;
  at::Tensor p_w = partial(a.weight.defined()), p_b = partial(a.bias.defined()), p_s = partial(sample_scale),
             p_sh = partial(sample_shift), p_g = partial(sample_gate);
  if (tasks > 0 && d > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "fastdiff_adaln_modulate_backward_cpu", [&] {
      using T = scalar_t;
      using A = at::opmath_type<T>;
      const std::vector<A> w = param_row<T, A>(a.weight, d, A(1)), bb = param_row<T, A>(a.bias, d, A(0));
      const at::Tensor mc = mean.contiguous(), rc = rstd.contiguous();
      const A *mp = mc.data_ptr<A>(), *rp = rc.data_ptr<A>();
      auto pp = [](at::Tensor& t) { return t.defined() ? t.data_ptr<A>() : nullptr; };
      A *pw = pp(p_w), *pb = pp(p_b), *ps = pp(p_s), *psh = pp(p_sh), *pg = pp(p_g);
      auto tp = [](at::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; };
      T *dhp = d_h.data_ptr<T>(), *dxp = gated ? d_x.data_ptr<T>() : nullptr;
      const int64_t grain = std::max<int64_t>(1, cpu::kGrainElements / std::max<int64_t>(rows_per_task * d, 1));
      at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
        RowReader<T, A> gs(go, d, A(0)), hs(a.x, d, A(0)), ghs(gh, d, A(0)), ss(a.scale, d, A(0)),
            xs(a.residual, d, A(0)), gates(a.gate, d, A(0));
        RowWriter<T, A> dhw(dhp, d), dxw(dxp, d), sw(tp(t_scale), d), shw(tp(t_shift), d), gw(tp(t_gate), d);
        std::vector<A> n(d), dn(d);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t bi = task / blocks, blk = task % blocks;
          auto at_task = [&](A* p) { return p != nullptr ? p + task * d : nullptr; };
          for (int64_t li = blk * rows_per_task; li < std::min(L, (blk + 1) * rows_per_task); ++li) {
            const int64_t r = bi * L + li;
            BwdRow<A> br;
            br.g = gs.row(bi, li);
            br.h = hs.row(bi, li);
            br.gh = gh.defined() ? ghs.row(bi, li) : nullptr;
            br.w = w.data();
            br.b = bb.data();
            br.s = ss.row(bi, li);
            br.x = gated ? xs.row(bi, li) : nullptr;
            br.gate = gated ? gates.row(bi, li) : nullptr;
            br.mean = mp[r];
            br.rstd = rp[r];
            br.d = d;
            br.rms = rms;
            br.n = n.data();
            br.dn = dn.data();
            br.dh = dhw.row(r);
            br.dx = gated ? dxw.row(r) : nullptr;
            br.acc_w = at_task(pw);
            br.acc_b = at_task(pb);
            br.acc_s = at_task(ps);
            br.acc_sh = at_task(psh);
            br.acc_gate = at_task(pg);
            br.row_s = sw.row(r);
            br.row_sh = shw.row(r);
            br.row_gate = gw.row(r);
            bwd_row(br);
            dhw.done();
            if (gated) dxw.done();
            sw.done();
            shw.done();
            gw.done();
          }
        }
      });
    });
  }
  const at::ScalarType st = h.scalar_type();
  auto empty = [&]() { return at::empty({0}, opts); };
  // A per-sample gradient: the task partials summed over each sample's blocks, in the argument's own shape.
  auto per_sample = [&](const at::Tensor& p, const c10::optional<at::Tensor>& arg) {
    if (tasks == 0 || d == 0) return at::zeros(arg->sizes(), opts);
    return p.view({B, blocks, d}).sum(1).to(st).view(arg->sizes());
  };
  auto grad_of = [&](const RowView& v, const at::Tensor& tok_t, const at::Tensor& p,
                     const c10::optional<at::Tensor>& arg) {
    if (!v.defined()) return empty();
    return v.per_token ? tok_t : per_sample(p, arg);
  };
  auto column = [&](const at::Tensor& p, bool present) {
    if (!present) return empty();
    if (tasks == 0 || d == 0) return at::zeros({d}, opts);
    return p.sum(0).to(st);
  };
  return {d_h,
          d_x,
          grad_of(a.gate, t_gate, p_g, gate),
          grad_of(a.scale, t_scale, p_s, scale),
          grad_of(a.shift, t_shift, p_sh, shift),
          column(p_w, a.weight.defined()),
          column(p_b, a.bias.defined())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) {
  m.impl("adaln_modulate", &adaln_modulate_cpu);
  m.impl("adaln_modulate_backward", &adaln_modulate_backward_cpu);
}

}  // namespace fastdiff
