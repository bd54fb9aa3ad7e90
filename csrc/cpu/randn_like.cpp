// Philox normals shaped like x on CPU (fastdiff's noise stream: Triton's tl.randn(seed, offset + flat index)).
#include <torch/library.h>

#include "cpu_loop.h"
#include "fastdiff/checks.h"

namespace fastdiff {
namespace {

at::Tensor randn_like_cpu(const at::Tensor& x, int64_t seed, int64_t offset) {
  check_randn_args(x, seed, offset);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "randn_like_cpu", [&] {
    using T = scalar_t;
    T* y = out.data_ptr<T>();
    // One row of numel elements: element j uses counter offset + j.
    cpu::for_each_row_chunk(1, out.numel(), [&](int64_t, int64_t b, int64_t e) {
      float zb[cpu::kBuf<float, T>];
      float* z = cpu::out_buf(y + b, zb);
      cpu::fill_randn(z, e - b, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset) + static_cast<uint64_t>(b));
      cpu::store(z, y + b, e - b);
    }, cpu::kNoiseGrainElements);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CPU, m) { m.impl("randn_like", &randn_like_cpu); }

}  // namespace fastdiff
