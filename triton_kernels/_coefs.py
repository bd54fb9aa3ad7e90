"""Column indices of the [T, NCOEF] coefficient table and of the [S, STEP_NCOL] sampler step table, mirroring
fastdiff/ops/table.py.

Nothing is imported from fastdiff here so a test can compare these columns with the table's.
"""
import triton.language as tl

AC = tl.constexpr(0)                   # ᾱ_t
AC_PREV = tl.constexpr(1)              # ᾱ_{t-1} (1 at t = 0)
SQRT_AC = tl.constexpr(2)              # √ᾱ_t
SQRT_1M_AC = tl.constexpr(3)           # √(1 − ᾱ_t)
SQRT_RECIP_AC = tl.constexpr(4)        # 1/√ᾱ_t
SQRT_RECIPM1_AC = tl.constexpr(5)      # √(1/ᾱ_t − 1)
POST_COEF1 = tl.constexpr(6)           # β_t √ᾱ_{t-1} / (1 − ᾱ_t)        (DDPM eq. 7, x̂0 coefficient)
POST_COEF2 = tl.constexpr(7)           # (1 − ᾱ_{t-1}) √α_t / (1 − ᾱ_t)  (DDPM eq. 7, x_t coefficient)
POST_VAR = tl.constexpr(8)             # β̃_t
POST_LOGVAR = tl.constexpr(9)          # log β̃_t, clipped (β̃_0 replaced by β̃_1)
LOG_BETA = tl.constexpr(10)            # log β_t (Improved DDPM eq. 15, upper end)
FIXED_LARGE_LOGVAR = tl.constexpr(11)  # log (β̃_1, β_1, β_2, …)
NCOEF = tl.constexpr(12)

# Columns of the [S, STEP_NCOL] sampler step table (fastdiff.ops.sampler_step, docs/architecture.md, "Adding a sampler"), mirroring the end of
# fastdiff/ops/table.py exactly.
CFG_SCALE = tl.constexpr(0)   # w of o = o_u + w·(o_c − o_u)
A_X = tl.constexpr(1)         # D = clip(A_X·x + A_O·o)
A_O = tl.constexpr(2)
CLIP = tl.constexpr(3)        # D clamped to [−CLIP, CLIP] when CLIP > 0
C_X = tl.constexpr(4)         # x_next = C_X·x + C_D·D + C_O·o + C_OU·o_u + Σ_k C_H+k·H_k + C_Z·σ_var·z
C_D = tl.constexpr(5)
C_Z = tl.constexpr(6)
C_H = tl.constexpr(7)         # C_H + k for history slot k < MAX_HISTORY
MAX_HISTORY = tl.constexpr(3)
WRITE_D = tl.constexpr(10)    # history slot that receives D (−1: none)
WRITE_X = tl.constexpr(11)    # history slot that receives x (−1: none)
LOGVAR_HI = tl.constexpr(12)  # log β_t (learned_range upper end, Improved DDPM eq. 15)
LOGVAR_LO = tl.constexpr(13)  # log β̃_t, clipped (lower end)
C_O = tl.constexpr(14)        # coefficient of the (guided, unclipped) model output o
C_OU = tl.constexpr(15)       # coefficient of the unconditional output o_u (unused without one)
STEP_NCOL = tl.constexpr(16)
