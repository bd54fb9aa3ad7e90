// The one sampler step (docs/architecture.md, "Adding a sampler"): CFG combine, D = clip(a_x·x + a_o·o), x_next = c_x·x + c_D·D + c_o·o + c_ou·o_u +
// Σ_k c_k·H_k + c_z·σ_var·z with noise from a tensor or in-kernel Philox, then D / x into history slots in place;
// per-element math in fastdiff/sampler_math.h, shared with the CPU kernel.
#include "device.cuh"
#include "fastdiff/philox.h"
#include "fastdiff/sampler_math.h"

namespace fastdiff {
namespace cuda {
namespace {

// One thread handles V consecutive elements of row n (16-byte loads for V > 1); grid-strided over rows and vectors.
// Every branch below depends on the row or the launch only, so a warp never diverges on it. Each thread reads its
// elements of every slot before it writes any, and no other thread touches them: a slot may be read and rewritten
// by the same step.
template <typename T, typename R, int V>
__global__ void sampler_step_kernel(Rows rows, TableArgs table, SamplerStepParams p) {
  using A = acc_t<T>;
  const T* x = static_cast<const T*>(p.x);
  const T* mo = static_cast<const T*>(p.mo);
  const T* mou = static_cast<const T*>(p.mou);
  const T* noise = static_cast<const T*>(p.noise);
  T* out = static_cast<T*>(p.out);
  T* d_out = static_cast<T*>(p.d);
  T* hist = static_cast<T*>(p.history);
  const int64_t m = rows.m, vecs = m / V, slot_stride = rows.n * m;  // history is [K, N, M]
  const bool seeded = noise == nullptr && has_philox_seed(p);
  const uint64_t seed = seeded ? step_seed(p) : 0;
  for (int64_t n = blockIdx.y; n < rows.n; n += gridDim.y) {
    R row[step::STEP_NCOL];
    // A negative device seed (not checkable on the host without a sync) poisons the step like an out-of-range row.
    const int64_t sn = seeded && static_cast<int64_t>(seed) < 0 ? -1 : table.t[n];
    load_row(static_cast<const R*>(table.coefs), table.table_len, sn, row);
    const StepCoefs<A> c = step_coefs<A>(row, p.history_len);  // c_h = 0 for slots >= K: never read
    const bool noisy = (noise != nullptr || seeded) && step_reads_noise(c, p.var_mode);
    const bool learned = noisy && p.var_mode != step::VAR_MODE_TABLE;
    const bool raw_o = c.c_o != A(0), raw_ou = mou != nullptr && c.c_ou != A(0);  // the raw outputs' terms
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < vecs;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t i = n * m + j * V;  // flat element index into x-shaped tensors (and into each history slot)
      const T* mo_row = mo + n * p.mo_row + j * V;
      const Pack<T, V> xv = load<T, V>(x + i);
      const Pack<T, V> cond = load<T, V>(mo_row);
      Pack<T, V> unc, var, z, h[step::MAX_HISTORY], res, dv;
      if (mou != nullptr) unc = load<T, V>(mou + n * p.mou_row + j * V);
      if (learned) var = load<T, V>(mo_row + m);  // variance channels C..2C of the conditional output
      if (noisy && noise != nullptr) z = load<T, V>(noise + i);
#pragma unroll
      for (int k = 0; k < step::MAX_HISTORY; ++k) {
        if (c.c_h[k] != A(0)) h[k] = load<T, V>(hist + k * slot_stride + i);
      }
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const A xa = to_acc(xv.v[e]);
        A o = to_acc(cond.v[e]);
        if (mou != nullptr) o = guided(o, to_acc(unc.v[e]), c.cfg_scale);
        const A d = step_denoised(c, xa, o);
        A r = step_affine(c, xa, d);
        if (raw_o) r = step_add_term(r, c.c_o, o);
        if (raw_ou) r = step_add_term(r, c.c_ou, to_acc(unc.v[e]));
#pragma unroll
        for (int k = 0; k < step::MAX_HISTORY; ++k) {
          if (c.c_h[k] != A(0)) r = step_add_term(r, c.c_h[k], to_acc(h[k].v[e]));
        }
        if (noisy) {
          const uint64_t counter = static_cast<uint64_t>(p.offset) + static_cast<uint64_t>(i + e);
          const A zk = noise != nullptr ? to_acc(z.v[e]) : static_cast<A>(philox::randn(seed, counter));
          r = step_add_noise(r, step_noise_coef(c, p.var_mode, learned ? to_acc(var.v[e]) : A(0)), zk);
        }
        res.v[e] = from_acc<T>(r);
        dv.v[e] = from_acc<T>(d);
      }
      store<T, V>(out + i, res);
      if (d_out != nullptr) store<T, V>(d_out + i, dv);
      if (c.write_d >= 0) store<T, V>(hist + c.write_d * slot_stride + i, dv);
      if (c.write_x >= 0 && c.write_x != c.write_d) store<T, V>(hist + c.write_x * slot_stride + i, xv);
    }
  }
}

// 16-byte accesses need every row length a multiple of V and every pointer aligned (history slots then are too:
// their stride N·M is a multiple of V).
template <typename T>
bool vectorisable(const Rows& rows, const SamplerStepParams& p) {
  constexpr int V = 16 / sizeof(T);
  return rows.m % V == 0 && p.mo_row % V == 0 && p.mou_row % V == 0 && aligned16(p.x) && aligned16(p.mo) &&
         aligned16(p.mou) && aligned16(p.noise) && aligned16(p.out) && aligned16(p.d) && aligned16(p.history);
}

}  // namespace

void launch_sampler_step(DType dtype, Rows rows, TableArgs table, const SamplerStepParams& p, cudaStream_t stream) {
  if (rows.n == 0 || rows.m == 0) return;
  dispatch_dtypes(dtype, table.coefs_dtype, [&](auto tt, auto rt) {
    using T = typename decltype(tt)::type;
    using R = typename decltype(rt)::type;
    launch_rows<T>(rows, vectorisable<T>(rows, p), [&](auto v, RowLaunch l) {
      sampler_step_kernel<T, R, decltype(v)::value><<<l.grid, l.threads, 0, stream>>>(rows, table, p);
    });
  });
}

}  // namespace cuda
}  // namespace fastdiff
