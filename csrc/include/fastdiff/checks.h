// Argument checks shared by the CPU (csrc/cpu) and CUDA (csrc/cuda/*_torch.cpp) registrations: one copy of each
// check, with messages that name the argument, mirroring fastdiff/ops/common.py. Includes torch; never include
// it from a .cu file.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Optional.h>
#include <c10/util/StringUtil.h>

#include "fastdiff/coefs.h"

namespace fastdiff {

inline void check_float(const char* name, const at::Tensor& v, const at::Tensor* like = nullptr,
                        const char* like_name = "x") {
  const auto st = v.scalar_type();
  TORCH_CHECK(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble,
              name, " must be float16, bfloat16, float32 or float64, got ", st);
  if (like != nullptr) {
    TORCH_CHECK(v.device() == like->device(), name, " is on ", v.device(), " but ", like_name, " is on ", like->device());
    TORCH_CHECK(st == like->scalar_type(), name, " has dtype ", st, " but ", like_name, " has ", like->scalar_type(),
                "; cast explicitly");
  }
}

// A [S, NCOL] float32/float64 table on x's device with S > 0 (the caller checks NCOL, naming the table's kind),
// and its row indices t: int32/int64 [N] on x's device. The range check 0 <= t < S runs on CPU only (on CUDA it
// would synchronise; the kernels poison a bad row with NaN on device). Returns t as contiguous int64.
// Mirrors check_index_table in fastdiff/ops/common.py.
inline at::Tensor check_index_table(const char* table_name, const char* index_name, const at::Tensor& x,
                                    const at::Tensor& table, const at::Tensor& t) {
  TORCH_CHECK(table.size(0) > 0, table_name, " must have at least one row, got shape ", table.sizes());
  TORCH_CHECK(table.scalar_type() == at::kFloat || table.scalar_type() == at::kDouble, table_name,
              " must be float32 or float64, got ", table.scalar_type());
  TORCH_CHECK(table.device() == x.device(), table_name, " is on ", table.device(), " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, index_name,
              " must be an int32/int64 tensor, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(0), index_name, " must have shape [N] = [", x.size(0),
              "] (one row index per sample), got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), index_name, " is on ", t.device(), " but x is on ", x.device());
  if (t.device().is_cpu() && t.numel() > 0) {
    const int64_t lo = t.min().item<int64_t>(), hi = t.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < table.size(0), index_name, " must lie in [0, ", table.size(0), ") (the rows of ",
                table_name, "), got min ", lo, " max ", hi);
  }
  return t.to(at::kLong).contiguous();
}

// Validates coefs [T, NCOEF] and t [N] (check_index_table); returns contiguous int64 t.
inline at::Tensor check_coefs_t(const at::Tensor& x, const at::Tensor& coefs, const at::Tensor& t) {
  TORCH_CHECK(coefs.dim() == 2 && coefs.size(1) == coef::NCOEF, "coefs must be a [T, ", int(coef::NCOEF),
              "] table from fastdiff.ops.step_table, got shape ", coefs.sizes());
  return check_index_table("coefs", "t", x, coefs, t);
}

inline void check_model_output(const char* name, const at::Tensor& mo, const at::Tensor& x) {
  check_float(name, mo, &x);
  TORCH_CHECK(mo.dim() == x.dim() && mo.size(0) == x.size(0) && mo.sizes().slice(2) == x.sizes().slice(2) &&
                  (mo.size(1) == x.size(1) || mo.size(1) == 2 * x.size(1)),
              name, " must have shape [N, C or 2C, ...] matching x ", x.sizes(), ", got ", mo.sizes());
}

// Sampler steps: seed < 0 means "no in-kernel noise"; the offset is a 63-bit counter base.
inline void check_seed_offset(int64_t seed, int64_t offset) {
  (void)seed;
  TORCH_CHECK(offset >= 0, "offset must be an int in [0, 2**63), got ", offset);
}

inline void check_randn_args(const at::Tensor& x, int64_t seed, int64_t offset) {
  check_float("x", x);
  TORCH_CHECK(seed >= 0, "seed must be an int in [0, 2**63), got ", seed);
  check_seed_offset(seed, offset);
}

// Contiguous views and row lengths of a sampler step's arguments (sampler_step's, less its table and history).
struct StepArgs {
  at::Tensor x, mo, mou, coefs, t, noise;  // mou / noise undefined when absent
  at::Tensor seed;                         // the device seed (int64, one element), undefined when absent
  int64_t n, m, mo_row, mou_row;           // N, M = x[0].numel(), Mo = model_output[0].numel(), Mu likewise
};

// seed_tensor: an int64 tensor of shape [] or [1] on x's device holding the Philox seed, in place of the int
// `seed` (which must then be -1). Returns it as one contiguous element, or an undefined tensor when absent.
inline at::Tensor check_seed_tensor(const at::Tensor& x, const c10::optional<at::Tensor>& seed_tensor,
                                    const at::Tensor& noise, int64_t seed) {
  if (!seed_tensor.has_value()) return at::Tensor();
  const at::Tensor& s = *seed_tensor;
  TORCH_CHECK(s.scalar_type() == at::kLong, "seed_tensor must be an int64 tensor of shape [] or [1], got dtype ",
              s.scalar_type());
  TORCH_CHECK(s.dim() <= 1 && s.numel() == 1, "seed_tensor must be an int64 tensor of shape [] or [1], got shape ",
              s.sizes());
  TORCH_CHECK(s.device() == x.device(), "seed_tensor is on ", s.device(), " but x is on ", x.device());
  TORCH_CHECK(seed < 0, "pass the seed either as the int seed or as seed_tensor, not both (got seed=", seed, ")");
  TORCH_CHECK(!noise.defined(), "pass either noise (a tensor) or seed_tensor (in-kernel Philox noise), not both");
  return s.reshape({1}).contiguous();
}

// The int seed of a CPU step: `seed`, or the value of the CPU seed tensor (reading it costs no sync), checked
// to be a 63-bit non-negative integer like an int seed; -1 when there is no in-kernel noise.
inline int64_t host_seed(const StepArgs& a, int64_t seed) {
  if (!a.seed.defined()) return seed;
  TORCH_CHECK(a.seed.is_cpu(), "host_seed reads CPU seed tensors only, got one on ", a.seed.device());
  const int64_t v = a.seed.data_ptr<int64_t>()[0];
  TORCH_CHECK(v >= 0, "seed must be an int in [0, 2**63), got ", v, " (the value of seed_tensor)");
  return v;
}

// x, the model outputs and the noise source of a sampler step: every StepArgs field but coefs and t.
inline StepArgs check_step_inputs(const at::Tensor& x, const at::Tensor& model_output,
                                  const c10::optional<at::Tensor>& model_output_uncond,
                                  const c10::optional<at::Tensor>& noise, int64_t seed, int64_t offset,
                                  const c10::optional<at::Tensor>& seed_tensor) {
  check_float("x", x);
  TORCH_CHECK(x.dim() >= 2, "x must be [N, C, ...] with at least 2 dims, got shape ", x.sizes());
  check_model_output("model_output", model_output, x);
  StepArgs a;
  if (model_output_uncond.has_value()) {
    check_model_output("model_output_uncond", *model_output_uncond, x);
    a.mou = model_output_uncond->contiguous();
  }
  if (noise.has_value()) {
    check_float("noise", *noise, &x);
    TORCH_CHECK(noise->sizes() == x.sizes(), "noise must have x's shape ", x.sizes(), ", got ", noise->sizes());
    a.noise = noise->contiguous();
  }
  check_seed_offset(seed, offset);
  a.seed = check_seed_tensor(x, seed_tensor, a.noise, seed);
  a.x = x.contiguous();
  a.mo = model_output.contiguous();
  a.n = x.size(0);
  a.m = a.n > 0 ? x.numel() / a.n : 0;
  a.mo_row = a.n > 0 ? a.mo.numel() / a.n : 0;
  a.mou_row = a.mou.defined() && a.n > 0 ? a.mou.numel() / a.n : 0;
  return a;
}

// ------------------------------------------------------------------ sampler_step (fastdiff/ops/sampler_step.py)

// The [S, STEP_NCOL] step table and its row indices `step` (check_index_table); returns contiguous int64 step.
inline at::Tensor check_table_step(const at::Tensor& x, const at::Tensor& table, const at::Tensor& step) {
  TORCH_CHECK(table.dim() == 2 && table.size(1) == step::STEP_NCOL, "table must be a [S, ", int(step::STEP_NCOL),
              "] sampler step table (fastdiff.samplers.tables), got shape ", table.sizes());
  return check_index_table("table", "step", x, table, step);
}

// history: absent, or [K, *x.shape] with 1 <= K <= MAX_HISTORY, x's dtype and device, and contiguous (the kernels
// write its slots in place, so it cannot be copied into a contiguous temporary). Returns K (0 when absent).
inline int64_t check_history(const at::Tensor& x, const c10::optional<at::Tensor>& history) {
  if (!history.has_value()) return 0;
  const at::Tensor& h = *history;
  check_float("history", h, &x);
  TORCH_CHECK(h.dim() == x.dim() + 1 && h.sizes().slice(1) == x.sizes() && h.size(0) >= 1 &&
                  h.size(0) <= step::MAX_HISTORY,
              "history must have shape [K, *x.shape] = [K, ", c10::Join(", ", x.sizes()), "] with 1 <= K <= ",
              int(step::MAX_HISTORY), ", got ", h.sizes());
  TORCH_CHECK(h.is_contiguous(), "history must be contiguous (the step writes into it in place)");
  return h.size(0);
}

// var_mode 0 (table), 1 (learned) or 2 (learned_range); the learned ones read v from channels C..2C.
inline void check_var_mode(int64_t var_mode, const at::Tensor& model_output, const at::Tensor& x) {
  TORCH_CHECK(var_mode >= step::VAR_MODE_TABLE && var_mode <= step::VAR_MODE_LEARNED_RANGE,
              "var_mode must be 0 (table), 1 (learned) or 2 (learned_range), got ", var_mode);
  if (var_mode != step::VAR_MODE_TABLE) {
    TORCH_CHECK(model_output.size(1) == 2 * x.size(1), "var_mode=", var_mode, " needs model_output with 2C = ",
                2 * x.size(1), " channels (output and variance), got ", model_output.size(1));
  }
}

// A sampler_step's arguments: StepArgs with coefs = the step table and t = the int64 step rows, plus history
// (undefined when absent; the caller's tensor itself, written in place) and its slot count K.
struct SamplerStepArgs : StepArgs {
  at::Tensor history;
  int64_t k_slots = 0;
};

inline SamplerStepArgs check_sampler_step(const at::Tensor& x, const at::Tensor& model_output,
                                          const c10::optional<at::Tensor>& model_output_uncond,
                                          const at::Tensor& table, const at::Tensor& step,
                                          const c10::optional<at::Tensor>& history, int64_t var_mode,
                                          const c10::optional<at::Tensor>& noise, int64_t seed, int64_t offset,
                                          const c10::optional<at::Tensor>& seed_tensor) {
  SamplerStepArgs a;
  static_cast<StepArgs&>(a) = check_step_inputs(x, model_output, model_output_uncond, noise, seed, offset,
                                                seed_tensor);
  a.t = check_table_step(x, table, step);
  a.coefs = table.contiguous();
  a.k_slots = check_history(x, history);
  if (history.has_value()) a.history = *history;
  check_var_mode(var_mode, model_output, x);
  return a;
}

// q_sample / posterior_mean_variance: two tensors of one shape [N, ...] plus coefs and t.
struct PairArgs {
  at::Tensor a, b, coefs, t;
  int64_t n, m;
};

inline PairArgs check_pair(const char* name_a, const at::Tensor& a, const char* name_b, const at::Tensor& b,
                           const at::Tensor& coefs, const at::Tensor& t) {
  check_float(name_a, a);
  TORCH_CHECK(a.dim() >= 1, name_a, " must have a batch dimension, got a 0-dim tensor");
  check_float(name_b, b, &a, name_a);
  TORCH_CHECK(b.sizes() == a.sizes(), name_b, " must have ", name_a, "'s shape ", a.sizes(), ", got ", b.sizes());
  PairArgs p;
  p.t = check_coefs_t(a, coefs, t);
  p.a = a.contiguous();
  p.b = b.contiguous();
  p.coefs = coefs.contiguous();
  p.n = a.size(0);
  p.m = p.n > 0 ? a.numel() / p.n : 0;
  return p;
}

inline at::ScalarType acc_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace fastdiff
