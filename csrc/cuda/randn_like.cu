// Philox normals (fastdiff's noise stream, README): out[j] = tl.randn(seed, offset + j), the stream fastdiff/philox.h shares with the CPU.
#include "device.cuh"
#include "fastdiff/philox.h"

namespace fastdiff {
namespace cuda {
namespace {

template <typename T, int V>
__global__ void randn_kernel(int64_t numel, uint64_t seed, uint64_t offset, T* out) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < numel / V;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Pack<T, V> res;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      res.v[k] = from_acc<T>(static_cast<acc_t<T>>(philox::randn(seed, offset + static_cast<uint64_t>(j * V + k))));
    }
    store<T, V>(out + j * V, res);
  }
}

}  // namespace

void launch_randn_like(DType dtype, int64_t numel, int64_t seed, int64_t offset, void* out, cudaStream_t stream) {
  if (numel == 0) return;
  dispatch_dtype(dtype, [&](auto tt) {
    using T = typename decltype(tt)::type;
    constexpr int V = 16 / sizeof(T);
    T* o = static_cast<T*>(out);
    const uint64_t s = static_cast<uint64_t>(seed), off = static_cast<uint64_t>(offset);
    if (numel % V == 0 && aligned16(out)) {
      const RowLaunch l = row_launch(1, numel / V);
      randn_kernel<T, V><<<l.grid.x, l.threads, 0, stream>>>(numel, s, off, o);
    } else {
      const RowLaunch l = row_launch(1, numel);
      randn_kernel<T, 1><<<l.grid.x, l.threads, 0, stream>>>(numel, s, off, o);
    }
  });
}

}  // namespace cuda
}  // namespace fastdiff
