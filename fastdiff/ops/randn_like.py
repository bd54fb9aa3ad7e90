"""fastdiff's noise stream (README, Backends) as a tensor: Philox(seed, offset + flat index) normals shaped like x."""
from __future__ import annotations

import torch

from fastdiff.ops import backend as _backend
from fastdiff.ops import common as C
from fastdiff.ops import philox


def reference(x, seed: int, offset: int):
    """Standard normals with x's shape, dtype and device; element j (row-major) uses counter offset + j."""
    return philox.randn(x.shape, seed, offset, device=x.device).to(x.dtype)


def randn_like(x: torch.Tensor, seed: int, offset: int = 0, backend: str | None = None) -> torch.Tensor:
    """Counter-based normals like x: the same values on every backend and device for the same (seed, offset)."""
    C.check_float("x", x)
    philox.check_seed_offset(seed, offset)
    impl = _backend.implementation("randn_like", _backend.resolve("randn_like", x.device, backend=backend), reference)
    return impl(x, seed, offset)
