// Column indices of the [T, NCOEF] coefficient table; mirrors fastdiff/ops/_table.py exactly.
#pragma once

namespace fastdiff {
namespace coef {
enum : int {
  AC = 0,                  // ᾱ_t
  AC_PREV = 1,             // ᾱ_{t-1} (1 at t = 0)
  SQRT_AC = 2,             // √ᾱ_t
  SQRT_1M_AC = 3,          // √(1 − ᾱ_t)
  SQRT_RECIP_AC = 4,       // 1/√ᾱ_t
  SQRT_RECIPM1_AC = 5,     // √(1/ᾱ_t − 1)
  POST_COEF1 = 6,          // β_t √ᾱ_{t-1} / (1 − ᾱ_t)       (DDPM eq. 7, x̂0 coefficient)
  POST_COEF2 = 7,          // (1 − ᾱ_{t-1}) √α_t / (1 − ᾱ_t) (DDPM eq. 7, x_t coefficient)
  POST_VAR = 8,            // β̃_t
  POST_LOGVAR = 9,         // log β̃_t, β̃_0 replaced by β̃_1
  LOG_BETA = 10,           // log β_t
  FIXED_LARGE_LOGVAR = 11, // log of (β̃_1, β_1, β_2, …)
  NCOEF = 12
};
}  // namespace coef

// Kernel codes, as in fastdiff/ops/_common.py (PREDICTIONS, VAR_TYPES).
enum Prediction : int { PRED_EPS = 0, PRED_X0 = 1, PRED_V = 2 };
enum VarType : int { VAR_FIXED_SMALL = 0, VAR_FIXED_LARGE = 1, VAR_LEARNED = 2, VAR_LEARNED_RANGE = 3 };

}  // namespace fastdiff
