// Host launchers of the CUDA kernels: raw pointers, sizes and a stream; no torch types, so the .cu files compile
// with nvcc alone (`make cuda-check`) and the *_torch.cpp registrations compile with the host compiler.
// Tensors are contiguous and viewed as rows: [N, M] for x-shaped tensors, [N, Mo] for model outputs.
// Launchers only enqueue work: they never synchronise; the caller checks cudaGetLastError.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace fastdiff {
namespace cuda {

enum class DType : int { kHalf, kBFloat16, kFloat, kDouble };

struct Rows {
  int64_t n = 0, m = 0;  // N samples, M = x[0].numel()
};

struct TableArgs {
  const void* coefs = nullptr;  // [T, NCOL] float or double (NCOL: the kernel's table width)
  DType coefs_dtype = DType::kFloat;
  int64_t table_len = 0;        // T; rows with t[n] outside [0, T) produce NaN (and assert in debug builds)
  const int64_t* t = nullptr;   // [N]
};

// The one sampler step (fastdiff.ops.sampler_step, docs/architecture.md, "Adding a sampler"); the table is TableArgs' [S, STEP_NCOL] step table
// and t its row per sample.
struct SamplerStepParams {
  const void *x = nullptr, *mo = nullptr, *mou = nullptr, *noise = nullptr;  // mou / noise may be null
  void *out = nullptr, *d = nullptr;                                          // d (the returned D) may be null
  // [K, N, M], contiguous, or null (K = 0): slots read where their row coefficient is nonzero and written in
  // place after every read of the element (WRITE_D / WRITE_X).
  void* history = nullptr;
  int history_len = 0;
  int64_t mo_row = 0, mou_row = 0;  // Mo, Mu: row lengths of model_output(_uncond) (M or 2M)
  int var_mode = 0;                 // 0 table, 1 learned, 2 learned_range (v: model_output channels C..2C)
  int64_t seed = -1, offset = 0;    // seed < 0 and no seed_ptr: no in-kernel noise
  // Non-null: the Philox seed is read from this device int64 (seed is ignored), so a CUDA graph that captured
  // the launch draws new noise when the value changes. The offset stays a kernel scalar (fixed per captured step).
  const int64_t* seed_ptr = nullptr;
};
void launch_sampler_step(DType dtype, Rows rows, TableArgs table, const SamplerStepParams& p, cudaStream_t stream);

// out = a·u + b·v per row: q_sample (DDPM eq. 4; u = x_start, v = noise) or the posterior mean (DDPM eq. 7;
// u = x_start, v = x_t), which also writes β̃_t and log β̃_t to var / log_var ([N], accumulation dtype).
void launch_q_sample(DType dtype, Rows rows, TableArgs table, const void* x_start, const void* noise, void* out,
                     cudaStream_t stream);
void launch_posterior_mean_variance(DType dtype, Rows rows, TableArgs table, const void* x_start, const void* x_t,
                                    void* mean, void* var, void* log_var, cudaStream_t stream);

// out[j] = tl.randn(seed, offset + j) for j < numel, cast to dtype.
void launch_randn_like(DType dtype, int64_t numel, int64_t seed, int64_t offset, void* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastdiff
