// Column indices of the fused ops' tables; each enum mirrors its Python constants exactly.
#pragma once

namespace fastdiff {

// The [T, NCOEF] schedule table of q_sample and posterior_mean_variance (fastdiff/ops/table.py, top); the
// ddim_step / ddpm_step wrappers build sampler_step rows from it in Python.
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

// Column indices of the [S, STEP_NCOL] sampler step table of fastdiff.ops.sampler_step (docs/architecture.md, "Adding a sampler"); mirrors the
// constants at the end of fastdiff/ops/table.py exactly. Per row: o = o_u + CFG_SCALE·(o_c − o_u);
// D = clip(A_X·x + A_O·o, ±CLIP) (CLIP <= 0: none); x_next = C_X·x + C_D·D + C_O·o + C_OU·o_u + Σ_k C_H+k·H_k +
// C_Z·σ_var·z; then D is written to history slot WRITE_D and x to slot WRITE_X (-1: none).
namespace step {
enum : int {
  CFG_SCALE = 0,  // w of the CFG combine
  A_X = 1,        // D = A_X·x + A_O·o
  A_O = 2,
  CLIP = 3,       // clamp D to [−CLIP, CLIP] when CLIP > 0
  C_X = 4,        // x_next = C_X·x + C_D·D + C_O·o + C_OU·o_u + Σ_k C_H+k·H_k + C_Z·σ_var·z
  C_D = 5,
  C_Z = 6,
  C_H = 7,        // C_H + k for history slot k < MAX_HISTORY
  MAX_HISTORY = 3,
  WRITE_D = C_H + MAX_HISTORY,  // 10: slot that receives D (a float holding an int; -1: none)
  WRITE_X = WRITE_D + 1,        // 11: slot that receives x
  LOGVAR_HI = WRITE_X + 1,      // 12: log β_t
  LOGVAR_LO = LOGVAR_HI + 1,    // 13: log β̃_t (clipped)
  C_O = LOGVAR_LO + 1,          // 14: coefficient of the (guided, unclipped) model output o itself
  C_OU = C_O + 1,               // 15: coefficient of the unconditional output o_u (unused without one)
  STEP_NCOL = C_OU + 1          // 16
};

// var_mode codes, as fastdiff.ops.table.VAR_MODES: σ_var = 1, or exp(½ log σ²) with log σ² = v (learned) or
// the Improved DDPM eq. 15 interpolation (learned_range).
enum VarMode : int { VAR_MODE_TABLE = 0, VAR_MODE_LEARNED = 1, VAR_MODE_LEARNED_RANGE = 2 };
}  // namespace step

}  // namespace fastdiff
