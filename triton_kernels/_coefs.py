"""Column indices of the [T, NCOEF] coefficient table, mirroring fastdiff/ops/table.py.

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
