// DDIM step (Song et al. eq. 12, guided-diffusion's ddim_sample) with classifier-free guidance, clipping and
// noise from a tensor or in-kernel Philox; per-element math in fastdiff/sampler_math.h, shared with the CPU kernel.
#include "device.cuh"
#include "fastdiff/philox.h"
#include "fastdiff/sampler_math.h"

namespace fastdiff {
namespace cuda {
namespace {

// One thread handles V consecutive elements of row n (16-byte loads for V > 1); grid-strided over rows and vectors.
template <typename T, typename R, int V>
__global__ void ddim_step_kernel(Rows rows, TableArgs table, StepParams p) {
  using A = acc_t<T>;
  const T* x = static_cast<const T*>(p.x);
  const T* mo = static_cast<const T*>(p.mo);
  const T* mou = static_cast<const T*>(p.mou);
  const T* noise = static_cast<const T*>(p.noise);
  T* out = static_cast<T*>(p.out);
  T* x0_out = static_cast<T*>(p.x0);
  const int64_t m = rows.m, vecs = m / V;
  const A scale = static_cast<A>(p.guidance_scale);
  const bool seeded = noise == nullptr && has_philox_seed(p);
  const uint64_t seed = seeded ? step_seed(p) : 0;
  for (int64_t n = blockIdx.y; n < rows.n; n += gridDim.y) {
    R row[coef::NCOEF];
    // A negative device seed (not checkable on the host without a sync) poisons the step like an out-of-range t.
    const int64_t tn = seeded && static_cast<int64_t>(seed) < 0 ? -1 : table.t[n];
    load_row(static_cast<const R*>(table.coefs), table.table_len, tn, row);
    const DdimCoefs<A> c = ddim_coefs<A>(row, tn != 0, static_cast<A>(p.eta), p.prediction, p.clip);
    // Philox normals are finite, so a zero noise scale (t = 0 or η = 0) adds exactly nothing: skip them.
    const bool philox_noise = seeded && c.noise_scale != A(0);
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < vecs;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t i = n * m + j * V;  // flat element index into x-shaped tensors
      const Pack<T, V> xv = load<T, V>(x + i);
      const Pack<T, V> cond = load<T, V>(mo + n * p.mo_row + j * V);
      Pack<T, V> unc, z, res, x0v;
      if (mou != nullptr) unc = load<T, V>(mou + n * p.mou_row + j * V);
      if (noise != nullptr) z = load<T, V>(noise + i);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A xa = to_acc(xv.v[k]);
        A eps = to_acc(cond.v[k]);
        if (mou != nullptr) eps = guided(eps, to_acc(unc.v[k]), scale);
        const A x0 = predict_x0(c.x0, xa, eps);
        A r = ddim_mean(c, xa, x0);
        if (noise != nullptr) {
          r += c.noise_scale * to_acc(z.v[k]);
        } else if (philox_noise) {
          const uint64_t counter = static_cast<uint64_t>(p.offset) + static_cast<uint64_t>(i + k);
          r += c.noise_scale * static_cast<A>(philox::randn(seed, counter));
        }
        res.v[k] = from_acc<T>(r);
        x0v.v[k] = from_acc<T>(x0);
      }
      store<T, V>(out + i, res);
      if (x0_out != nullptr) store<T, V>(x0_out + i, x0v);
    }
  }
}

}  // namespace

void launch_ddim_step(DType dtype, Rows rows, TableArgs table, const StepParams& p, cudaStream_t stream) {
  if (rows.n == 0 || rows.m == 0) return;
  dispatch_dtypes(dtype, table.coefs_dtype, [&](auto tt, auto rt) {
    using T = typename decltype(tt)::type;
    using R = typename decltype(rt)::type;
    launch_step_rows<T>(rows, p, [&](auto v, RowLaunch l) {
      ddim_step_kernel<T, R, decltype(v)::value><<<l.grid, l.threads, 0, stream>>>(rows, table, p);
    });
  });
}

}  // namespace cuda
}  // namespace fastdiff
