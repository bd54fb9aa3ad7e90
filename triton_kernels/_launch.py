"""Host-side launch helpers shared by the launchers: row views, tile sizes, scalars. No host synchronisation."""
from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

# The kernels are memory-bound: 1024 elements per program with 4 warps gives each thread 8 contiguous
# values per stream (two 16-byte vectors in fp32); at full occupancy (16 programs per SM) that keeps
# >= 64 KiB of loads in flight per SM, enough to stream HBM on an H100. tests/ops puts shapes at
# BLOCK ± 1 to exercise the masks.
TILE = 1024
MAX_BLOCK_M = 1024
MAX_GRID_Y = 65535  # CUDA's limit on grid.y, which indexes blocks of a row


class Tiling:
    """A [ROWS, BLOCK_M] tile over N rows of M elements, and the 2-D grid (row blocks, column blocks)."""

    def __init__(self, n: int, m: int):
        self.block_m = min(triton.next_power_of_2(max(m, 1)), MAX_BLOCK_M)
        self.rows = min(max(TILE // self.block_m, 1), triton.next_power_of_2(max(n, 1)))
        elems = self.rows * self.block_m
        self.num_warps = 4 if elems >= 512 else 1
        col_blocks = max(triton.cdiv(m, self.block_m), 1)
        if col_blocks > MAX_GRID_Y:
            raise ValueError(f"a row of {m} elements per sample needs {col_blocks} blocks, "
                             f"more than the {MAX_GRID_Y} a grid dimension allows")
        self.grid = (triton.cdiv(n, self.rows), col_blocks)


def rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(tensor, row stride) for reading x: [N, ...] as N rows of x[0].numel() contiguous values.

    Row-strided views (e.g. model_output[:, :C], or an expanded batch) are read in place;
    anything else is made contiguous, so strided data is never read wrong.
    """
    if x.dim() == 0:
        return x.reshape(1), 1
    if x.shape[0] > 0 and not x[0].is_contiguous():
        x = x.contiguous()
    return x, x.stride(0)


def acc_dtype(dtype: torch.dtype):
    """Triton accumulation dtype: fp64 for fp64 storage, fp32 otherwise (fastdiff.ops._common.acc_dtype)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def split_float(value: float) -> tuple[float, float]:
    """value as fp32 hi + fp32 lo, since Triton passes Python floats as fp32 (rebuilt by host_scalar)."""
    hi = struct.unpack("f", struct.pack("f", value))[0]
    return hi, float(value - hi)


def noise_mode(noise, seed: int) -> int:
    """0: no noise term, 1: the caller's noise tensor, 2: in-kernel Philox(seed, offset)."""
    if seed >= 0:
        return 2
    return 1 if noise is not None else 0
