// The one sampler step (docs/architecture.md, "Adding a sampler"): CFG combine, D = clip(a_x·x + a_o·o), x_next = c_x·x + c_D·D + c_o·o + c_ou·o_u +
// Σ_k c_k·H_k + c_z·σ_var·z with noise from a tensor or in-kernel Philox, then D / x into history slots in place;
// per-element math in fastdiff/sampler_math.h, shared with the CPU kernel.
#include "device.cuh"
#include "fastdiff/flat_packs.h"
#include "fastdiff/philox.h"
#include "fastdiff/sampler_math.h"

namespace fastdiff {
namespace cuda {
namespace {

// Each thread takes packs of V consecutive elements of the flat [N, M] tensor (fastdiff/flat_packs.h), grid-strided:
// a pack inside one row is one access of V elements per tensor (16 bytes for V > 1); with CROSS (V does not divide
// M), one that crosses a row end goes element by element. The element-wise path is its own instantiation because
// it costs registers (ptxas -v, fp16 V = 8 on sm_80: 80 without it, 96 with it). Neighbouring threads may be in
// different rows (short rows share a block), so a warp can diverge on a row's branches: a cost, never a race.
// Each thread reads its elements of every slot before it writes any, and no other thread touches them: a slot may be
// read and rewritten by the same step.
// Blocks of 256 threads an SM must hold, which caps registers (ptxas -v, sm_80 / sm_90, no spills): 3 (<= 80
// registers) for the in-row fp16 / fp32 variants, which then use 76-80 (84-90 uncapped); 2 (<= 128) for the rest,
// bf16 90-121, fp64 92-96, the row-crossing variants 86-127, which spill 16-352 bytes under the cap of 3
// (docs/architecture.md, "CUDA launch shapes").
template <typename T, bool CROSS>
constexpr int kStepMinBlocks = !CROSS && (std::is_same_v<T, __half> || std::is_same_v<T, float>) ? 3 : 2;

template <typename T, typename R, int V, bool CROSS>
__global__ void __launch_bounds__(kThreads, (kStepMinBlocks<T, CROSS>))
    sampler_step_kernel(Rows rows, RowDivider div, TableArgs table, SamplerStepParams p) {
  using A = acc_t<T>;
  const T* x = static_cast<const T*>(p.x);
  const T* mo = static_cast<const T*>(p.mo);
  const T* mou = static_cast<const T*>(p.mou);
  const T* noise = static_cast<const T*>(p.noise);
  T* out = static_cast<T*>(p.out);
  T* d_out = static_cast<T*>(p.d);
  T* hist = static_cast<T*>(p.history);
  const int64_t m = rows.m, total = rows.n * m;  // history is [K, N, M]
  const bool seeded = noise == nullptr && has_philox_seed(p);
  const uint64_t seed = seeded ? step_seed(p) : 0;
  // A negative device seed (not checkable on the host without a sync) poisons the step like an out-of-range row.
  const bool bad_seed = seeded && static_cast<int64_t>(seed) < 0;

  // The step's coefficients for row n.
  auto row_coefs = [&](int64_t n) {
    R row[step::STEP_NCOL];
    load_row(static_cast<const R*>(table.coefs), table.table_len, bad_seed ? -1 : table.t[n], row);
    return step_coefs<A>(row, p.history_len);  // c_h = 0 for slots >= K: never read
  };

  // W elements from flat index i = n·M + j on, all in row n.
  auto step_pack = [&](auto width, int64_t i, int64_t n, int64_t j) {
    constexpr int W = decltype(width)::value;
    const StepCoefs<A> c = row_coefs(n);
    const bool noisy = (noise != nullptr || seeded) && step_reads_noise(c, p.var_mode);
    const bool learned = noisy && p.var_mode != step::VAR_MODE_TABLE;
    const bool raw_o = c.c_o != A(0), raw_ou = mou != nullptr && c.c_ou != A(0);  // the raw outputs' terms
    const T* mo_row = mo + n * p.mo_row + j;
    const Pack<T, W> xv = load<T, W>(x + i);
    const Pack<T, W> cond = load<T, W>(mo_row);
    Pack<T, W> unc, var, z, h[step::MAX_HISTORY], res, dv;
    if (mou != nullptr) unc = load<T, W>(mou + n * p.mou_row + j);
    if (learned) var = load<T, W>(mo_row + m);  // variance channels C..2C of the conditional output
    if (noisy && noise != nullptr) z = load<T, W>(noise + i);
#pragma unroll
    for (int k = 0; k < step::MAX_HISTORY; ++k) {
      if (c.c_h[k] != A(0)) h[k] = load<T, W>(hist + k * total + i);
    }
#pragma unroll
    for (int e = 0; e < W; ++e) {
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
    store<T, W>(out + i, res);
    if (d_out != nullptr) store<T, W>(d_out + i, dv);
    if (c.write_d >= 0) store<T, W>(hist + c.write_d * total + i, dv);
    if (c.write_x >= 0 && c.write_x != c.write_d) store<T, W>(hist + c.write_x * total + i, xv);
  };

  for_each_pack<V, CROSS>(blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                          static_cast<int64_t>(gridDim.x) * blockDim.x, total, div, step_pack);
}

// V-element accesses need every pointer 16-byte aligned and every tensor aligned where x is: the model outputs'
// rows (M, or 2M with a learned variance, whose half at +M is then aligned too) and the history slots (N·M apart).
template <typename T>
bool vectorisable(const Rows& rows, const SamplerStepParams& p) {
  constexpr int V = 16 / sizeof(T);
  return aligned16(p.x) && aligned16(p.mo) && aligned16(p.mou) && aligned16(p.noise) && aligned16(p.out) &&
         aligned16(p.d) && aligned16(p.history) && rows_aligned_like(p.mo_row, rows.m, V) &&
         (p.mou == nullptr || rows_aligned_like(p.mou_row, rows.m, V)) &&
         (p.history == nullptr || rows.n * rows.m % V == 0);
}

}  // namespace

void launch_sampler_step(DType dtype, Rows rows, TableArgs table, const SamplerStepParams& p, cudaStream_t stream) {
  if (rows.n == 0 || rows.m == 0) return;
  const RowDivider div(rows.m, rows.n * rows.m);
  dispatch_dtypes(dtype, table.coefs_dtype, [&](auto tt, auto rt) {
    using T = typename decltype(tt)::type;
    using R = typename decltype(rt)::type;
    launch_packs<T>(rows.n * rows.m, vectorisable<T>(rows, p), [&](auto v, FlatLaunch l) {
      constexpr int V = decltype(v)::value;
      if constexpr (V > 1) {
        if (rows.m % V != 0) {
          sampler_step_kernel<T, R, V, true><<<l.blocks, l.threads, 0, stream>>>(rows, div, table, p);
          return;
        }
      }
      sampler_step_kernel<T, R, V, false><<<l.blocks, l.threads, 0, stream>>>(rows, div, table, p);
    });
  });
}

}  // namespace cuda
}  // namespace fastdiff
