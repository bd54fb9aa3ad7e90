// Philox normals (fastdiff's noise stream, README): out[j] = tl.randn(seed, offset + j), the stream fastdiff/philox.h shares with the CPU.
#include "device.cuh"
#include "fastdiff/flat_packs.h"
#include "fastdiff/philox.h"

namespace fastdiff {
namespace cuda {
namespace {

// Packs of V elements of one row of numel, grid-strided (fastdiff/flat_packs.h); the last, partial one element by
// element.
template <typename T, int V>
__global__ void randn_kernel(int64_t numel, RowDivider one_row, uint64_t seed, uint64_t offset, T* out) {
  auto draw = [&](auto width, int64_t i, int64_t, int64_t) {
    constexpr int W = decltype(width)::value;
    Pack<T, W> res;
#pragma unroll
    for (int k = 0; k < W; ++k) {
      res.v[k] = from_acc<T>(static_cast<acc_t<T>>(philox::randn(seed, offset + static_cast<uint64_t>(i + k))));
    }
    store<T, W>(out + i, res);
  };
  for_each_pack<V, (V > 1)>(blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                            static_cast<int64_t>(gridDim.x) * blockDim.x, numel, one_row, draw);
}

}  // namespace

void launch_randn_like(DType dtype, int64_t numel, int64_t seed, int64_t offset, void* out, cudaStream_t stream) {
  if (numel == 0) return;
  dispatch_dtype(dtype, [&](auto tt) {
    using T = typename decltype(tt)::type;
    T* o = static_cast<T*>(out);
    const uint64_t s = static_cast<uint64_t>(seed), off = static_cast<uint64_t>(offset);
    const RowDivider one_row(numel, numel);
    launch_packs<T>(numel, aligned16(out), [&](auto v, FlatLaunch l) {
      randn_kernel<T, decltype(v)::value><<<l.blocks, l.threads, 0, stream>>>(numel, one_row, s, off, o);
    });
  });
}

}  // namespace cuda
}  // namespace fastdiff
