"""Host-side launch helpers shared by the launchers: row views, tile sizes, scalars. No host synchronisation."""
from __future__ import annotations

import functools
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


def interpreted() -> bool:
    """True when kernels run in Triton's interpreter (TRITON_INTERPRET=1) rather than compiled for a GPU.

    Launchers branch on this, never on the tensors' device, so the ahead-of-time check (`make triton-check`),
    which captures launches of CPU tensors without the interpreter, sees exactly the GPU configuration."""
    return bool(triton.knobs.runtime.interpret)


def loop_bound(n: int):
    """A kernel's runtime loop bound. The interpreter hands runtime ints to kernels as 1-element arrays that numpy 2
    will not turn into a `range` bound, so there it goes in as a constexpr (a kernel per value, which costs nothing
    without compilation); compiled, it stays a runtime argument (one kernel for every value)."""
    return tl.constexpr(n) if interpreted() else n


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device, for grids sized to fill it; an H100's 132 elsewhere (the
    interpreter, the ahead-of-time check)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def on_tensor_device(launcher):
    """Run `launcher` with its first tensor argument's CUDA device current: Triton launches on the current device,
    so tensors on cuda:1 while cuda:0 is current would otherwise be read through the wrong device's context."""
    @functools.wraps(launcher)
    def launch(*args, **kwargs):
        x = next(a for a in args if isinstance(a, torch.Tensor))
        if x.device.type != "cuda":
            return launcher(*args, **kwargs)
        with torch.cuda.device(x.device):
            return launcher(*args, **kwargs)
    return launch


class Tiling:
    """A [ROWS, BLOCK_M] tile over N rows of M elements, and the 1-D grid over (row block, column block) pairs
    (decomposed in _sampler_math.tile)."""

    def __init__(self, n: int, m: int, dtype: torch.dtype):
        self.block_m = min(triton.next_power_of_2(max(m, 1)), MAX_BLOCK_M)
        self.rows = min(max(TILE // self.block_m, 1), triton.next_power_of_2(max(n, 1)))
        elems = self.rows * self.block_m
        self.num_warps = 4 if elems >= 512 else 1
        if dtype == torch.float64 and elems >= 256:
            # fp64 math takes register pairs: at 8 values per thread the former DDPM step kernel with learned-range
            # variance and Philox noise spilled on sm_90, and the sampler step with three history slots on one warp
            # at a 4 x 64 tile (224-240 B, make triton-check); at 4 the step's 512-row toy tile, whose per-row
            # coefficients are per value too, spilled 56 B on sm_80 once its noise took a correctly rounded sqrt.
            # 256, 512, 1024 values on 4, 8, 16 warps hold 2 each.
            self.num_warps = elems // 64
        self.grid = (triton.cdiv(n, self.rows) * max(triton.cdiv(m, self.block_m), 1),)


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
    """Triton accumulation dtype: fp64 for fp64 storage, fp32 otherwise (fastdiff.ops.common.acc_dtype)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def split_float(value: float) -> tuple[float, float]:
    """value as fp32 hi + fp32 lo, since Triton passes Python floats as fp32 (rebuilt by host_scalar)."""
    hi = struct.unpack("f", struct.pack("f", value))[0]
    return hi, float(value - hi)


def noise_mode(noise, seed: int, seed_tensor=None) -> int:
    """0: no noise term, 1: the caller's noise tensor, 2: in-kernel Philox(seed, offset) with an int seed or
    the device seed tensor (read by the kernel). A noise tensor wins over a seed, as in the reference
    (fastdiff.ops.common.step_noise) and the C++ kernels."""
    if noise is not None:
        return 1
    return 2 if seed >= 0 or seed_tensor is not None else 0


class StepLaunch:
    """The sampler step launcher's outputs, row views and noise mode.

    `inputs` are the kernel's leading arguments (x, x_stride, mo, mo_stride, mu, mu_stride, noise, noise_stride);
    `outputs` its (out, D) pointers (D aliases out when not stored; return_x0 asks for D). `empty` means nothing
    to launch.
    `seed` is the kernels' (seed, seed_ptr, SEED_FROM_PTR) triple: the int seed (>= 0, else 0) and, with a device
    seed tensor ([] or [1] int64), its pointer read by the kernel (else x, never read).
    """

    def __init__(self, x, model_output, model_output_uncond, noise, seed: int, return_x0: bool, seed_tensor=None):
        self.n = x.shape[0]
        self.m = x[0].numel() if self.n else 0
        self.x_prev = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        self.x0 = torch.empty(x.shape, dtype=x.dtype, device=x.device) if return_x0 else x.new_empty(0)
        self.empty = self.n == 0 or self.m == 0
        if self.empty:
            return
        xr, x_stride = rows(x)
        mo, mo_stride = rows(model_output)
        mu, mu_stride = rows(model_output_uncond) if model_output_uncond is not None else (mo, mo_stride)
        self.noise_mode = noise_mode(noise, seed, seed_tensor)
        self.seed = (max(seed, 0), xr, False) if seed_tensor is None else (0, seed_tensor.reshape(1), True)
        nz, nz_stride = rows(noise) if self.noise_mode == 1 else (xr, x_stride)
        self.inputs = (xr, x_stride, mo, mo_stride, mu, mu_stride, nz, nz_stride)
        self.outputs = (self.x_prev, self.x0 if return_x0 else self.x_prev)
        self.tiling = Tiling(self.n, self.m, x.dtype)
        self.acc = acc_dtype(x.dtype)
