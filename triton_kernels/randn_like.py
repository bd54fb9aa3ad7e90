"""fastdiff's noise stream (README, Backends) as a tensor: Philox(seed, offset + flat index) normals shaped like x."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _launch
from . import _sampler_math as sm

BLOCK = 1024


@triton.jit(do_not_specialize=["seed", "offset"])
def _randn_kernel(out_ptr, numel, seed, offset, BLOCK: tl.constexpr):
    """out[j] = Philox4x32-10 + Box-Muller normal at counter offset + j (int64 counters)."""
    j = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    z = sm.philox_normal(seed, offset, j)
    tl.store(out_ptr + j, z.to(out_ptr.dtype.element_ty), mask=j < numel)


@_launch.on_tensor_device
def randn_like(x, seed, offset):
    """Standard normals with x's shape and dtype, contiguous; as fastdiff.ops.randn_like.reference."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    numel = out.numel()
    if numel:
        _randn_kernel[(triton.cdiv(numel, BLOCK),)](out, numel, seed, offset, BLOCK=BLOCK, num_warps=4)
    return out
