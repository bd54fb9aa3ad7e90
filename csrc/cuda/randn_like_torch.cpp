// TORCH_LIBRARY_IMPL(fastdiff, CUDA) for randn_like: the shared checks, then the launcher on the current stream.
#include <torch/library.h>

#include "torch_glue.h"

namespace fastdiff {
namespace {

at::Tensor randn_like_cuda(const at::Tensor& x, int64_t seed, int64_t offset) {
  check_randn_args(x, seed, offset);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  cuda::launch_randn_like(cuda::dtype_of(out), out.numel(), seed, offset, out.data_ptr(), cuda::current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, CUDA, m) { m.impl("randn_like", &randn_like_cuda); }

}  // namespace fastdiff
