// Philox normals (fastdiff's noise stream, README): out[j] = tl.randn(seed, offset + j), the stream fastdiff/philox.h shares with the CPU.
#include "device.cuh"
#include "fastdiff/philox.h"

namespace fastdiff {
namespace cuda {
namespace {

// Packs of V elements, grid-strided; the last, partial one element by element.
template <typename T, int V>
__global__ void randn_kernel(int64_t numel, uint64_t seed, uint64_t offset, T* out) {
  const int64_t packs = (numel + V - 1) / V;
  for (int64_t pk = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; pk < packs;
       pk += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = pk * V;
    if (e + V <= numel) {
      Pack<T, V> res;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        res.v[k] = from_acc<T>(static_cast<acc_t<T>>(philox::randn(seed, offset + static_cast<uint64_t>(e + k))));
      }
      store<T, V>(out + e, res);
    } else {
      for (int64_t i = e; i < numel; ++i) {
        out[i] = from_acc<T>(static_cast<acc_t<T>>(philox::randn(seed, offset + static_cast<uint64_t>(i))));
      }
    }
  }
}

}  // namespace

void launch_randn_like(DType dtype, int64_t numel, int64_t seed, int64_t offset, void* out, cudaStream_t stream) {
  if (numel == 0) return;
  dispatch_dtype(dtype, [&](auto tt) {
    using T = typename decltype(tt)::type;
    T* o = static_cast<T*>(out);
    const uint64_t s = static_cast<uint64_t>(seed), off = static_cast<uint64_t>(offset);
    launch_packs<T>(numel, aligned16(out), [&](auto v, FlatLaunch l) {
      randn_kernel<T, decltype(v)::value><<<l.blocks, l.threads, 0, stream>>>(numel, s, off, o);
    });
  });
}

}  // namespace cuda
}  // namespace fastdiff
