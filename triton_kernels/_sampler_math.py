"""Per-element sampler math as @triton.jit helpers, written once for every op (mirrors fastdiff/ops/common.py).

Kernels work on a [ROWS, BLOCK_M] tile: ROWS samples n (one timestep t[n] each) by BLOCK_M elements of the
sample's row of M = x[0].numel() values. Per-sample coefficients are gathered once per program as [ROWS, 1]
columns and broadcast along the row. Every loaded value is cast to ACC (fp32, or fp64 for fp64 inputs)
before any arithmetic.

The noise path (Philox normals, the learned variance's exp) uses correctly rounded sqrt / division and libdevice's
expf, the math the CUDA kernels compile to (no --use_fast_math), so a seed gives the Triton and CUDA kernels the
same noise bit for bit: tl.randn's sqrt and tl.exp are PTX approximations (sqrt.approx, ex2.approx), 1-2 ulp off.
`make triton-check` fails if an approximation reaches these kernels' PTX.
"""
import triton
import triton.language as tl
from triton import knobs
from triton.language.extra import libdevice

from . import _coefs as K

_INTERPRET = tl.constexpr(knobs.runtime.interpret)


@triton.jit
def exp_precise(v):
    """e^v as the CUDA kernels' expf / exp (libdevice __nv_expf: within 2 ulp, where tl.exp is ex2.approx of v·log2 e
    on a GPU). The interpreter has no libdevice; its tl.exp is numpy's."""
    if _INTERPRET:
        return tl.exp(v)
    else:
        return libdevice.exp(v)


@triton.jit
def tile(N, M, ROWS: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's samples `rows` (int64 [ROWS]), row offsets `cols` ([BLOCK_M]), masks, and whether it holds
    the first column block of its rows. The grid is 1-D over (row block, column block) pairs (_launch.Tiling), so
    neither N nor M meets a grid dimension's 65,535 limit."""
    pid = tl.program_id(0).to(tl.int64)
    col_blocks = tl.maximum(tl.cdiv(M, BLOCK_M), 1)  # M = 0: one (masked) block per row block, as the grid
    col_block = pid % col_blocks
    rows = (pid // col_blocks) * ROWS + tl.arange(0, ROWS)
    cols = col_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    mask = row_mask[:, None] & (cols < M)[None, :]
    return rows, cols, row_mask, mask, col_block == 0


@triton.jit
def load_tile(ptr, rows, row_stride, cols, mask, ACC: tl.constexpr):
    """ptr[n * row_stride + i] for the tile, cast to ACC."""
    offs = rows[:, None] * row_stride + cols[None, :]
    return tl.load(ptr + offs, mask=mask, other=0.0).to(ACC)


@triton.jit
def store_tile(ptr, rows, M, cols, mask, value):
    """Write the tile into a contiguous [N, M] output, in the output's dtype."""
    offs = rows[:, None] * M + cols[None, :]
    tl.store(ptr + offs, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def load_t(t_ptr, rows, row_mask, T):
    """The timestep index t[n] of each row, int64 [ROWS]: 0 for rows past N, and -1 where t[n] lies outside the
    table's [0, T) (coef_rows then gives NaN: the sample is poisoned, never read out of bounds, and no host
    synchronisation is needed to check it)."""
    t = tl.load(t_ptr + rows, mask=row_mask, other=0).to(tl.int64)
    return tl.where((t >= 0) & (t < T), t, -1)


@triton.jit
def table_rows(table_ptr, t, COL: tl.constexpr, NCOL: tl.constexpr, ACC: tl.constexpr):
    """table[t[n], COL] of a contiguous [T, NCOL] table for each row, ACC [ROWS]; NaN for t = -1 (out of range,
    see load_t), whose load goes to row 0 instead."""
    valid = t >= 0
    value = tl.load(table_ptr + tl.where(valid, t, 0) * NCOL + COL).to(ACC)
    return tl.where(valid, value, float("nan"))


@triton.jit
def coef_rows(coefs_ptr, t, COL: tl.constexpr, ACC: tl.constexpr):
    """coefs[t[n], COL] of the [T, NCOEF] coefficient table for each row, ACC [ROWS]; NaN for t = -1."""
    return table_rows(coefs_ptr, t, COL, K.NCOEF, ACC)


@triton.jit
def coef(coefs_ptr, t, COL: tl.constexpr, ACC: tl.constexpr):
    """coefs[t[n], COL] as an ACC [ROWS, 1] column (guided-diffusion's _extract_into_tensor)."""
    return coef_rows(coefs_ptr, t, COL, ACC)[:, None]


@triton.jit
def host_scalar(hi, lo, ACC: tl.constexpr):
    """A host float passed as two fp32 halves (hi + lo), rebuilt in ACC so fp64 kernels keep ~48 bits."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def cfg_combine(out_c, out_u, scale):
    """Classifier-free guidance ε = ε_u + s·(ε_c − ε_u) (Ho & Salimans eq. 6 with s = 1 + w)."""
    return out_u + scale * (out_c - out_u)


@triton.jit
def clamp_abs(v, bound):
    """v clamped to [-bound, bound] (bound: a number or an ACC [ROWS, 1] column, > 0)."""
    # Comparisons rather than min/max: NaN stays NaN as in torch.clamp, in fp32 and fp64 alike.
    return tl.where(v < -bound, -bound, tl.where(v > bound, bound, v))


@triton.jit
def posterior_mean(x0, xt, coefs_ptr, t, ACC: tl.constexpr):
    """μ̃_t(x_t, x̂0) = coef1 x̂0 + coef2 x_t (DDPM eq. 7)."""
    return coef(coefs_ptr, t, K.POST_COEF1, ACC) * x0 + coef(coefs_ptr, t, K.POST_COEF2, ACC) * xt


@triton.jit
def learned_range_log_variance(v, log_hi, log_lo):
    """Improved DDPM eq. 15: frac·log β_t + (1 − frac)·log β̃_t, frac = (v + 1)/2 (log_hi, log_lo: [ROWS, 1])."""
    frac = (v + 1.0) * 0.5
    return frac * log_hi + (1.0 - frac) * log_lo


@triton.jit
def q_sample_mix(x0, noise, coefs_ptr, t, ACC: tl.constexpr):
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM eq. 4)."""
    return coef(coefs_ptr, t, K.SQRT_AC, ACC) * x0 + coef(coefs_ptr, t, K.SQRT_1M_AC, ACC) * noise


@triton.jit
def philox_normal(seed, offset, counter):
    """Standard normals Philox4x32-10(seed, offset + counter) + Box-Muller (fastdiff.ops.philox), int64 counters, fp32:
    tl.randn(seed, offset + counter)'s words, uniforms and formula √(−2 log max(u1, 1e-7))·cos(2π u2), with a
    correctly rounded sqrt where tl.randn's is approximate on a GPU."""
    w0, w1, _, _ = tl.randint4x(seed, offset + counter)
    u1 = tl.maximum(1.0e-7, tl.uint_to_uniform_float(w0))
    u2 = tl.uint_to_uniform_float(w1)
    return tl.sqrt_rn(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)


@triton.jit
def step_seed(seed, seed_ptr, SEED_FROM_PTR: tl.constexpr):
    """The Philox seed: the int64 at seed_ptr (device memory, so a captured CUDA graph sees its value at replay)
    when SEED_FROM_PTR, else the scalar `seed`."""
    if SEED_FROM_PTR:
        seed = tl.load(seed_ptr)
    return seed


@triton.jit
def step_t_seed(t_ptr, rows, row_mask, T, seed, seed_ptr, NOISE: tl.constexpr, SEED_FROM_PTR: tl.constexpr):
    """(t, seed) of a sampler step: load_t's rows and the Philox seed. A negative device seed (which the host cannot
    check without a synchronisation) marks every row out of range, so the step comes out NaN as in the CUDA kernels
    (an int seed is checked on the host)."""
    t = load_t(t_ptr, rows, row_mask, T)
    if NOISE == 2:
        seed = step_seed(seed, seed_ptr, SEED_FROM_PTR)
        t = tl.where(seed >= 0, t, -1)
    return t, seed


@triton.jit
def step_noise(noise_ptr, noise_stride, seed, offset, rows, M, cols, mask, NOISE: tl.constexpr, ACC: tl.constexpr):
    """The step's noise z for the tile: the caller's tensor (NOISE == 1) or Philox at flat index n·M + i (NOISE == 2)."""
    if NOISE == 1:
        z = load_tile(noise_ptr, rows, noise_stride, cols, mask, ACC)
    else:
        z = philox_normal(seed, offset, rows[:, None] * M + cols[None, :]).to(ACC)
    return z


# ------------------------------------------------------------------------------ the one sampler step (docs/architecture.md, "Adding a sampler")
# Rows r = step[n] of the [S, STEP_NCOL] step table (fastdiff.ops.table, mirrored in _coefs); r = -1 marks a step
# outside [0, S) (load_t), whose coefficients are NaN.

@triton.jit
def step_coef(table_ptr, r, COL: tl.constexpr, ACC: tl.constexpr):
    """table[r[n], COL] as an ACC [ROWS, 1] column; NaN for r = -1."""
    return table_rows(table_ptr, r, COL, K.STEP_NCOL, ACC)[:, None]


@triton.jit
def write_slot(table_ptr, r, COL: tl.constexpr):
    """The history slot int(table[r[n], COL]) a row writes to (WRITE_D / WRITE_X), int32 [ROWS, 1]: -1 (no write)
    where that is no slot in [0, MAX_HISTORY), for NaN, and for r = -1 (an out-of-range step writes nothing).
    Read per row from the device table, so choosing the slot needs no host read."""
    value = tl.load(table_ptr + tl.where(r >= 0, r, 0) * K.STEP_NCOL + COL)
    # Truncation toward zero in the table's dtype, as the reference's .to(int64); values outside (-1, MAX_HISTORY)
    # truncate to no slot either way, and are replaced before the cast so it never sees NaN or a huge value.
    in_range = (r >= 0) & (value > -1.0) & (value < K.MAX_HISTORY)
    return tl.where(in_range, value, -1.0).to(tl.int32)[:, None]


@triton.jit
def sparse_term(c, value):
    """c·value where c != 0, else 0: a zero coefficient drops its term even when value is inf or NaN."""
    return tl.where(c != 0, c * value, 0.0)


@triton.jit
def denoised(x, o, table_ptr, r, ACC: tl.constexpr):
    """D = clip(a_x·x + a_o·o): the denoised estimate from ε / x0 / v / flow velocity, clamped to ±CLIP where
    CLIP > 0 (NaN stays NaN). x, o: ACC [ROWS, BLOCK_M]."""
    d = step_coef(table_ptr, r, K.A_X, ACC) * x + step_coef(table_ptr, r, K.A_O, ACC) * o
    bound = step_coef(table_ptr, r, K.CLIP, ACC)
    return tl.where(bound > 0, clamp_abs(d, bound), d)


@triton.jit
def step_noise_scale(v, table_ptr, r, VAR_MODE: tl.constexpr, ACC: tl.constexpr):
    """c_z·σ_var: the noise coefficient, times exp(½ log σ²) for a learned variance (VAR_MODE 1: log σ² = v;
    2: Improved DDPM eq. 15 between LOGVAR_LO and LOGVAR_HI). v: ACC [ROWS, BLOCK_M] (unused for VAR_MODE 0)."""
    c = step_coef(table_ptr, r, K.C_Z, ACC)
    if VAR_MODE == 1:
        c = c * exp_precise(0.5 * v)
    elif VAR_MODE == 2:
        log_var = learned_range_log_variance(v, step_coef(table_ptr, r, K.LOGVAR_HI, ACC),
                                             step_coef(table_ptr, r, K.LOGVAR_LO, ACC))
        c = c * exp_precise(0.5 * log_var)
    return c
