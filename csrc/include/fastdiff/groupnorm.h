// GroupNorm / AdaGN math shared by the CPU (g++) and CUDA (nvcc) kernels of `adagn` (ADM §3):
//   out = act(GroupNorm(x; G, eps, gamma, beta) * (1 + scale) + shift),  act in {none, silu}.
// Statistics: Chan et al.'s parallel Welford combine of partial (count, mean, M2) triples, so a group can be
// reduced in chunks (CPU) or split over many blocks (CUDA) and merged without cancellation. Then the whole op is
// one affine map per (sample, channel) before the activation, and the backward is one affine map of (dz, x).
// No torch headers. A is the accumulation type: float for fp16/bf16/fp32 storage, double for fp64.
#pragma once

#include "fastdiff/macros.h"

namespace fastdiff {
namespace gn {

// Partial statistics of `count` values: their mean and M2 = sum of squared deviations from that mean.
template <typename A>
struct Welford {
  A count, mean, m2;
};

// The statistics of the union of two disjoint sets of values (Chan, Golub & LeVeque 1979).
template <typename A>
FASTDIFF_HD Welford<A> combine(Welford<A> a, Welford<A> b) {
  const A count = a.count + b.count;
  if (count == A(0)) return a;
  const A delta = b.mean - a.mean, fb = b.count / count;
  return {count, a.mean + delta * fb, a.m2 + b.m2 + delta * delta * a.count * fb};
}

// w ∪ {v_0, ..., v_{K−1}} with one division where adding the values one by one (Welford) takes K: the K values'
// own mean and M2 merged as in `combine`, about the centre v_0 + off (off = Σ(v_k − v_0)/K, 1/K exact for K a power
// of two). The pack's mean is never rounded as a whole: at a large offset a rounded pack mean moves the merge's
// delta, an error of first order in M2 (a sum of K values ~1e4 in float: 8x the one-by-one update's error), while
// v_k − v_0 is exact for nearby values. The CUDA statistics kernels add a 16-byte load of x (or K positions of a
// channel) at a time; tests/csrc/test_kernel_math.cpp compares it with the one-by-one update.
template <typename A, int K>
FASTDIFF_HD void welford_add_pack(Welford<A>& w, const A (&v)[K]) {
  static_assert(K > 0 && (K & (K - 1)) == 0, "K must be a power of two");
  A s = A(0);
  for (int k = 0; k < K; ++k) s += v[k] - v[0];
  const A off = s * (A(1) / A(K));
  A m2 = A(0);
  for (int k = 0; k < K; ++k) m2 += ((v[k] - v[0]) - off) * ((v[k] - v[0]) - off);
  const A count = w.count + A(K), fb = A(K) / count, delta = (v[0] - w.mean) + off;
  w.m2 += m2 + delta * (delta * (w.count * fb));  // 0 for the first pack, whatever delta's size
  w.mean += delta * fb;
  w.count = count;
}

// rstd = 1 / sqrt(Var + eps) with the biased variance M2 / count (GroupNorm's).
template <typename A>
FASTDIFF_HD A rstd(Welford<A> w, A eps) {
  const A var = w.count > A(0) ? w.m2 / w.count : A(0);
  return A(1) / fd_sqrt((var > A(0) ? var : A(0)) + eps);
}

// out = act(a * (x - mean) + b) for channel c of sample n: a = rstd*gamma*(1 + scale), b = beta*(1 + scale) + shift
// (scale / shift 0 when absent). Centering first keeps x - mean exact where rstd is large (a group of one value).
template <typename A>
struct Affine {
  A mean, a, b;
};

template <typename A>
FASTDIFF_HD Affine<A> channel_affine(A mean, A rstd, A gamma, A beta, A scale, A shift) {
  const A s1 = A(1) + scale;
  return {mean, rstd * gamma * s1, beta * s1 + shift};
}

template <typename A>
FASTDIFF_HD A apply(Affine<A> f, A x) { return f.a * (x - f.mean) + f.b; }

template <typename A>
FASTDIFF_HD A sigmoid(A z) { return A(1) / (A(1) + fd_exp(-z)); }

template <typename A>
FASTDIFF_HD A silu(A z) { return z * sigmoid(z); }

// d silu(z) / dz = sigma(z) * (1 + z * (1 - sigma(z))), from sigma(z).
template <typename A>
FASTDIFF_HD A silu_grad_from_sigmoid(A z, A sig) { return sig * (A(1) + z * (A(1) - sig)); }

// Backward, per channel c of group g of sample n, from the channel sums over the spatial positions
// sdz = sum dz and sdzc = sum dz * (x - mean) (dz = grad_out * act'(z); centred so no cancellation):
//   d scale = sum dz * y = gamma*rstd*sdzc + beta*sdz,   d shift = sdz,
//   the sample's share of d gamma = (1 + scale)*rstd*sdzc and of d beta = (1 + scale)*sdz.
template <typename A>
struct ChannelGrads {
  A scale, shift, gamma, beta;
};

template <typename A>
FASTDIFF_HD ChannelGrads<A> channel_grads(A sdz, A sdzc, A rstd, A gamma, A beta, A scale) {
  const A xhat_dz = rstd * sdzc;  // sum dz * xhat
  const A s1 = A(1) + scale;
  return {gamma * xhat_dz + beta * sdz, sdz, s1 * xhat_dz, s1 * sdz};
}

// dxhat = k_c * dz with k_c = (1 + scale_c)*gamma_c. The group's two sums that couple its channels are
// sum dxhat = sum_c k_c*sdz_c and sum dxhat*xhat = sum_c k_c*rstd*sdzc_c.
template <typename A>
FASTDIFF_HD A group_k(A gamma, A scale) { return (A(1) + scale) * gamma; }

// dx = rstd*(dxhat - mean_g(dxhat) - xhat*mean_g(dxhat*xhat)) as dx = rstd*(k*dz + q*(x - mean) + r) per
// channel, with m1 = mean_g(dxhat), m2 = mean_g(dxhat*xhat) over the group's count values: q = -rstd*m2, r = -m1
// (the difference k*dz - m1 is formed before scaling by rstd, so it is exact for a group of one value).
template <typename A>
struct DxAffine {
  A mean, rstd, k, q, r;
};

template <typename A>
FASTDIFF_HD DxAffine<A> dx_affine(A k, A mean, A rstd, A sum_dxhat, A sum_dxhat_xhat, A count) {
  const A m1 = sum_dxhat / count, m2 = sum_dxhat_xhat / count;
  return {mean, rstd, k, -rstd * m2, -m1};
}

template <typename A>
FASTDIFF_HD A apply(DxAffine<A> c, A dz, A x) { return c.rstd * (c.k * dz + c.q * (x - c.mean) + c.r); }

}  // namespace gn
}  // namespace fastdiff
