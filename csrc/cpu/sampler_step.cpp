// The one sampler step on CPU (docs/architecture.md, "Adding a sampler"): CFG combine, D = clip(a_x·x + a_o·o), x_next = c_x·x + c_D·D + c_o·o +
// c_ou·o_u + Σ_k c_k·H_k + c_z·σ_var·z, then D / x into history slots; per-element math in fastdiff/sampler_math.h.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "cpu_loop.h"
#include "fastdiff/checks.h"
#include "fastdiff/sampler_math.h"

FASTDIFF_CPU_NO_FP_CONTRACT

namespace fastdiff {
namespace {

// The history slots one row reads (c_k != 0), packed in slot order so the inner loop's trip count is a
// compile-time constant (cpu::with_count) and the sum keeps the reference's order.
template <typename A, typename T>
struct ChunkHistory {
  const A* h[step::MAX_HISTORY];  // slot values for the chunk, as A
  A c[step::MAX_HISTORY];         // their coefficients
  int count = 0;
  A buf[step::MAX_HISTORY][cpu::kBuf<A, T>];
};

// Slot k of sample n, elements [b, b + len) of its row: history is [K, N, M].
template <typename T>
T* slot_ptr(T* history, int64_t k, int64_t n, int64_t rows, int64_t m, int64_t b) {
  return history + (k * rows + n) * m + b;
}

template <typename A, typename T>
void load_history(ChunkHistory<A, T>& hs, const StepCoefs<A>& c, const T* history, int64_t k_slots, int64_t n,
                  int64_t rows, int64_t m, int64_t b, int64_t len) {
  for (int64_t k = 0; k < k_slots; ++k) {
    if (c.c_h[k] == A(0)) continue;  // never read: an uninitialised slot (NaN, garbage) stays out of the sum
    hs.h[hs.count] = cpu::load(slot_ptr(history, k, n, rows, m, b), hs.buf[hs.count], len);
    hs.c[hs.count] = c.c_h[k];
    ++hs.count;
  }
}

// After every read of the chunk: D into slot write_d and x into slot write_x (D wins when both name one slot).
template <typename A, typename T>
void write_history(const StepCoefs<A>& c, T* history, const A* d, const T* x, int64_t n, int64_t rows, int64_t m,
                   int64_t b, int64_t len) {
  if (c.write_d >= 0) cpu::convert(d, slot_ptr(history, c.write_d, n, rows, m, b), len);
  if (c.write_x >= 0 && c.write_x != c.write_d) std::copy(x, x + len, slot_ptr(history, c.write_x, n, rows, m, b));
}

// The raw-output terms a row adds (step_chunk's Raw): c_o·o where c_o != 0, c_ou·o_u where c_ou != 0 and there is an
// unconditional output.
enum : int { kRawO = 1, kRawOU = 2 };

template <typename A>
int raw_terms(const StepCoefs<A>& c, bool uncond) {
  return (c.c_o != A(0) ? kRawO : 0) | (uncond && c.c_ou != A(0) ? kRawOU : 0);
}

// The per-element step over one chunk of len elements (fastdiff/sampler_math.h, the reference's order). Raw: the
// raw_terms bits (kRawOU only with Cfg); NoiseKind: 0 no noise term, else 1 + var_mode; Slots: the history slots
// read (h[k] with coefficient hc[k], k < Slots). The flags make the loop branch-free; c and the slot arrays are
// copies, so stores through out / d cannot alias them and the loop vectorises, 16 floats wide in the AVX-512 clone
// (the SSE2 default alone made the fp32 flow-Euler step compute-bound: 2.6x torch.add over the same bytes).
template <bool Cfg, bool KeepD, int Raw, int NoiseKind, int Slots, typename A>
FASTDIFF_CPU_CLONES void step_chunk(const StepCoefs<A> c, int64_t len, const A* xr, const A* mo, const A* mu,
                                    const A* var, const A* zs, const A* const (&h)[step::MAX_HISTORY],
                                    const A (&hc)[step::MAX_HISTORY], A* out, A* d) {
  const A* hp[Slots + 1];
  A hk[Slots + 1];
  for (int k = 0; k < Slots; ++k) hp[k] = h[k], hk[k] = hc[k];
  for (int64_t j = 0; j < len; ++j) {
    const A xv = xr[j];
    A o = mo[j];
    if constexpr (Cfg) o = guided(o, mu[j], c.cfg_scale);
    const A dv = step_denoised(c, xv, o);
    A r = step_affine(c, xv, dv);
    if constexpr ((Raw & kRawO) != 0) r = step_add_term(r, c.c_o, o);
    if constexpr ((Raw & kRawOU) != 0) r = step_add_term(r, c.c_ou, mu[j]);
    for (int k = 0; k < Slots; ++k) r = step_add_term(r, hk[k], hp[k][j]);
    if constexpr (NoiseKind > 0) {
      r = step_add_noise(r, step_noise_coef(c, NoiseKind - 1, NoiseKind > 1 ? var[j] : A(0)), zs[j]);
    }
    out[j] = r;
    if constexpr (KeepD) d[j] = dv;
  }
}

std::tuple<at::Tensor, at::Tensor> sampler_step_cpu(const at::Tensor& x, const at::Tensor& model_output,
                                                    const c10::optional<at::Tensor>& model_output_uncond,
                                                    const at::Tensor& table, const at::Tensor& step,
                                                    const c10::optional<at::Tensor>& history, int64_t var_mode,
                                                    const c10::optional<at::Tensor>& noise, int64_t seed,
                                                    int64_t offset, bool return_denoised,
                                                    const c10::optional<at::Tensor>& seed_tensor) {
  const SamplerStepArgs a = check_sampler_step(x, model_output, model_output_uncond, table, step, history, var_mode,
                                               noise, seed, offset, seed_tensor);
  seed = host_seed(a, seed);
  at::Tensor x_next = at::empty_like(a.x);
  at::Tensor d_out = return_denoised ? at::empty_like(a.x) : at::empty({0}, a.x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "sampler_step_cpu", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const int k_slots = static_cast<int>(a.k_slots);
    const auto cs = cpu::per_sample<StepCoefs<A>>(a.coefs, a.t, [&](const auto* row, int64_t) {
      return step_coefs<A>(row, k_slots);
    });
    const T* xp = a.x.data_ptr<T>();
    const T* mop = a.mo.data_ptr<T>();
    const T* mup = cpu::ptr_or_null<T>(a.mou);
    const T* noise_p = cpu::ptr_or_null<T>(a.noise);
    T* hist = a.history.defined() ? a.history.mutable_data_ptr<T>() : nullptr;
    T* outp = x_next.data_ptr<T>();
    T* dp = return_denoised ? d_out.data_ptr<T>() : nullptr;
    const int64_t m = a.m, rows = a.n;
    const int mode = static_cast<int>(var_mode);
    const bool seeded = noise_p == nullptr && seed >= 0;  // in-kernel Philox noise
    // Chunks of kChunk elements where the stack buffers below hold them (a conversion from / to T, Philox noise, or
    // a D kept only for a history write); otherwise the step runs in place on kLargeChunk elements a call.
    const bool buffered = !std::is_same_v<A, T> || seeded || (hist != nullptr && dp == nullptr);
    // Philox noise and a learned variance's exp cost a few ns an element: threads pay off on fewer of them.
    const bool heavy = seeded || mode != step::VAR_MODE_TABLE;
    cpu::for_each_row_chunk(rows, m, [&](int64_t n, int64_t b, int64_t e) {
      const StepCoefs<A>& c = cs[n];
      const int64_t len = e - b, base = n * m + b;
      A z[cpu::kChunk], xb[cpu::kBuf<A, T>], mob[cpu::kBuf<A, T>], varb[cpu::kBuf<A, T>], mub[cpu::kBuf<A, T>];
      A outb[cpu::kBuf<A, T>], db[cpu::kChunk];
      const A* zs = step_reads_noise(c, mode) ? cpu::chunk_noise(z, noise_p, seed, offset, n, m, b, e) : nullptr;
      const T* mo_t = mop + n * a.mo_row + b;
      const A* xr = cpu::load(xp + base, xb, len);
      const A* mo = cpu::load(mo_t, mob, len);
      // The learned variance v: channels C..2C of the conditional output, read only when it scales noise.
      const A* var = cpu::load(mode != step::VAR_MODE_TABLE && zs != nullptr ? mo_t + m : nullptr, varb, len);
      const A* mu = cpu::load(mup != nullptr ? mup + n * a.mou_row + b : nullptr, mub, len);
      ChunkHistory<A, T> hs;
      if (hist != nullptr) load_history(hs, c, hist, a.k_slots, n, rows, m, b, len);
      T* out_t = outp + base;
      T* d_t = dp != nullptr ? dp + base : nullptr;
      A* out = cpu::out_buf(out_t, outb);
      // D is kept for the returned tensor and for a history write: d_t itself when T is A, else db.
      A* dr = d_t != nullptr ? cpu::out_buf(d_t, db) : (c.write_d >= 0 ? db : nullptr);
      // Noise kind: 0 none, else 1 + var_mode (one flag, so the loop is instantiated 4 ways, not 2·3).
      const int noise_kind = zs != nullptr ? 1 + mode : 0;
      cpu::with_flags([&](auto cfg, auto keep_d) {
        cpu::with_count<kRawO | kRawOU>(raw_terms(c, mu != nullptr), [&](auto raw) {
          constexpr bool kCfg = decltype(cfg)::value;
          constexpr int kRaw = decltype(raw)::value;
          if constexpr (kCfg || (kRaw & kRawOU) == 0) {  // c_ou·o_u only with an unconditional output
            cpu::with_count<3>(noise_kind, [&](auto nk) {
              cpu::with_count<step::MAX_HISTORY>(hs.count, [&](auto nh) {
                step_chunk<kCfg, decltype(keep_d)::value, kRaw, decltype(nk)::value, decltype(nh)::value>(
                    c, len, xr, mo, mu, var, zs, hs.h, hs.c, out, dr);
              });
            });
          }
        });
      }, mu != nullptr, dr != nullptr);
      cpu::store(out, out_t, len);
      cpu::store(dr, d_t, len);
      if (hist != nullptr) write_history(c, hist, dr, xp + base, n, rows, m, b, len);
    }, heavy ? cpu::kNoiseGrainElements : cpu::kGrainElements, buffered ? cpu::kChunk : cpu::kLargeChunk);
  });
  return {x_next, d_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) { m.impl("sampler_step", &sampler_step_cpu); }

}  // namespace fastdiff
