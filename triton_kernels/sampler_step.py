"""The one fused sampler step (docs/architecture.md, "Adding a sampler"): CFG combine, denoised estimate, clip, affine update with the raw model
outputs and history slots, noise, and the history write, in one pass over a row of the [S, STEP_NCOL] step table per
sample."""
from __future__ import annotations

import triton
import triton.language as tl

from . import _coefs as K
from . import _launch
from . import _sampler_math as sm


@triton.jit
def _add_history(x_next, hist_ptr, k: tl.constexpr, table_ptr, r, rows, N, M, cols, mask, ACC: tl.constexpr):
    """x_next + c_{H+k}·H_k, reading slot k ([K, N, M] contiguous) only in rows whose coefficient is nonzero, so an
    unused slot may hold anything (uninitialised memory, NaN)."""
    c = sm.step_coef(table_ptr, r, K.C_H + k, ACC)
    h = sm.load_tile(hist_ptr, rows + k * N, M, cols, mask & (c != 0), ACC)
    return x_next + sm.sparse_term(c, h)


@triton.jit
def _noise_term(noise_ptr, noise_stride, seed, offset, mo_ptr, mo_stride, table_ptr, r, rows, M, cols, mask,
                VAR_MODE: tl.constexpr, NOISE: tl.constexpr, ACC: tl.constexpr):
    """c_z·σ_var·z where that scale is nonzero, else 0 (sm.sparse_term): z from the noise tensor (NOISE 1) or Philox
    (NOISE 2), σ_var from the learned variance v, model_output's values M..2M of each row (VAR_MODE 1, 2)."""
    v = 0.0
    if VAR_MODE != 0:
        v = sm.load_tile(mo_ptr + M, rows, mo_stride, cols, mask, ACC)
    z = sm.step_noise(noise_ptr, noise_stride, seed, offset, rows, M, cols, mask, NOISE, ACC)
    return sm.sparse_term(sm.step_noise_scale(v, table_ptr, r, VAR_MODE, ACC), z)


@triton.jit
def _write_history(hist_ptr, k: tl.constexpr, write_d, write_x, d, x, rows, N, M, cols, mask):
    """history[k, n] = D where WRITE_D selects slot k, else x where WRITE_X does; other rows keep their values.
    write_d, write_x: int32 [ROWS, 1] (sm.write_slot)."""
    value = tl.where(write_d == k, d, x)
    sm.store_tile(hist_ptr, rows + k * N, M, cols, mask & ((write_d == k) | (write_x == k)), value)


@triton.jit(do_not_specialize=["seed", "offset"])
def _sampler_step_kernel(x_ptr, x_stride, mo_ptr, mo_stride, mu_ptr, mu_stride, noise_ptr, noise_stride,
                         table_ptr, step_ptr, S, hist_ptr, out_ptr, d_ptr, N, M, seed, seed_ptr, offset,
                         HAS_UNCOND: tl.constexpr, HISTORY: tl.constexpr, VAR_MODE: tl.constexpr,
                         NOISE: tl.constexpr, SEED_FROM_PTR: tl.constexpr, STORE_D: tl.constexpr,
                         ACC: tl.constexpr, ROWS: tl.constexpr, BLOCK_M: tl.constexpr):
    """x_next = c_x·x + c_D·D + c_o·o + c_ou·o_u + Σ_k c_{H+k}·H_k + c_z·σ_var·z with D = clip(a_x·x + a_o·o) and
    o = o_u + w·(o_c − o_u), every coefficient from row step[n] of the table (fastdiff.ops.sampler_step.reference,
    whose operation order this follows; docs/architecture.md, "Adding a sampler"); then D and x go into the history slots the row names. The
    c_o / c_ou terms are where'd per row (sm.sparse_term: both outputs are in registers already), c_ou·o_u only with
    an unconditional output. Philox noise is drawn, scaled and where'd before the loads (it depends on the row
    alone) and added last, in the reference's order: its Box-Muller temporaries are then never live with the loaded
    tiles (drawn at the end, after the compiler had hoisted every load, the Philox variants took 35 registers more on
    average and some spilled; make triton-check).

    x, out, d: [N, M] rows; model outputs: rows of stride mo_stride / mu_stride (o in the first M values, the learned
    variance v in the next M of the conditional output); table: [S, STEP_NCOL]; step: int64 [N]; history: [HISTORY,
    N, M] contiguous, read and written in place (each program reads its tile of every slot before writing it back);
    seed_ptr: int64 [1] device seed, read when SEED_FROM_PTR (else `seed`). A step outside [0, S), or a negative
    device seed, gives NaN rows and writes no history. One program: ROWS samples x BLOCK_M elements.
    """
    rows, cols, row_mask, mask, _ = sm.tile(N, M, ROWS, BLOCK_M)
    r, seed = sm.step_t_seed(step_ptr, rows, row_mask, S, seed, seed_ptr, NOISE, SEED_FROM_PTR)
    if NOISE == 2:
        noise_term = _noise_term(noise_ptr, noise_stride, seed, offset, mo_ptr, mo_stride, table_ptr, r, rows, M,
                                 cols, mask, VAR_MODE, NOISE, ACC)
    x = sm.load_tile(x_ptr, rows, x_stride, cols, mask, ACC)
    o = sm.load_tile(mo_ptr, rows, mo_stride, cols, mask, ACC)
    if HAS_UNCOND:
        o_u = sm.load_tile(mu_ptr, rows, mu_stride, cols, mask, ACC)
        o = sm.cfg_combine(o, o_u, sm.step_coef(table_ptr, r, K.CFG_SCALE, ACC))
    d = sm.denoised(x, o, table_ptr, r, ACC)
    x_next = sm.step_coef(table_ptr, r, K.C_X, ACC) * x + sm.step_coef(table_ptr, r, K.C_D, ACC) * d
    x_next = x_next + sm.sparse_term(sm.step_coef(table_ptr, r, K.C_O, ACC), o)  # o unclipped, not D
    if HAS_UNCOND:
        x_next = x_next + sm.sparse_term(sm.step_coef(table_ptr, r, K.C_OU, ACC), o_u)
    for k in tl.static_range(HISTORY):
        x_next = _add_history(x_next, hist_ptr, k, table_ptr, r, rows, N, M, cols, mask, ACC)
    if NOISE == 1:  # a noise tensor: loaded where it is used (loaded first, it cost registers instead)
        noise_term = _noise_term(noise_ptr, noise_stride, seed, offset, mo_ptr, mo_stride, table_ptr, r, rows, M,
                                 cols, mask, VAR_MODE, NOISE, ACC)
    if NOISE != 0:
        x_next = x_next + noise_term
    sm.store_tile(out_ptr, rows, M, cols, mask, x_next)
    if STORE_D:
        sm.store_tile(d_ptr, rows, M, cols, mask, d)
    if HISTORY > 0:
        # Every thread of the program has read its history values before any is overwritten, whichever layouts the
        # compiler gives the loads and the stores (programs never share elements).
        tl.debug_barrier()
        write_d = sm.write_slot(table_ptr, r, K.WRITE_D)
        write_x = sm.write_slot(table_ptr, r, K.WRITE_X)
        for k in tl.static_range(HISTORY):
            _write_history(hist_ptr, k, write_d, write_x, d, x, rows, N, M, cols, mask)


@_launch.on_tensor_device
def sampler_step(x, model_output, model_output_uncond, table, step, history, var_mode, noise, seed, offset,
                 return_denoised, seed_tensor=None):
    """One step of any sampler; arguments and results exactly those of fastdiff.ops.sampler_step.reference.

    x: [N, C, ...]; model_output(_uncond): [N, C or 2C, ...]; table: [S, STEP_NCOL]; step: int32/int64 [N] (or
    [] / [1]: one row for every sample); history: None or [K, N, C, ...], written in place; var_mode: 0 / 1 / 2;
    seed_tensor: None or the int64 [] / [1] device seed (then seed = -1).
    Returns (x_next [N, C, ...], D [N, C, ...] or empty [0]).
    """
    s = _launch.StepLaunch(x, model_output, model_output_uncond, noise, seed, return_denoised, seed_tensor)
    if s.empty:
        return s.x_prev, s.x0
    slots = 0 if history is None else history.shape[0]
    hist = history.contiguous() if slots else s.inputs[0]  # no history: x stands in, never read
    rows = step.reshape(-1).expand(s.n).contiguous()  # a shared row is read per sample, never past its end
    seed_int, seed_ptr, seed_from_ptr = s.seed
    _sampler_step_kernel[s.tiling.grid](
        *s.inputs, table.contiguous(), rows, table.shape[0], hist, *s.outputs, s.n, s.m, seed_int, seed_ptr, offset,
        HAS_UNCOND=model_output_uncond is not None, HISTORY=slots,
        VAR_MODE=var_mode if s.noise_mode else 0,  # σ_var only scales noise: one kernel for every mode without it
        NOISE=s.noise_mode, SEED_FROM_PTR=seed_from_ptr, STORE_D=bool(return_denoised), ACC=s.acc,
        ROWS=s.tiling.rows, BLOCK_M=s.tiling.block_m, num_warps=s.tiling.num_warps)
    if slots and hist is not history:  # the op takes contiguous history only; a direct caller's view is updated
        history.copy_(hist)
    return s.x_prev, s.x0
