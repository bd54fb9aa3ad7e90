"""GEGLU, the GELU-gated linear unit of a transformer feed-forward (Shazeer 2020, "GLU Variants Improve
Transformer", eq. 5), fused with its split; differentiable.

    out = h · GELU(g),   (h, g) = x.chunk(2, dim=-1)   (the first half is the value, the second the gate)

x: [..., 2F] (any layout: a Linear's output, or a non-contiguous view), out: [..., F] contiguous. This is
diffusers' `GEGLU` module after its projection (`hidden_states, gate = proj(h).chunk(2, dim=-1);
hidden_states * F.gelu(gate)`, the feed-forward of SD 1.5 / SDXL transformer blocks) and, with
approximate="tanh", its GELU-tanh variant:

    GELU(g) = ½g(1 + erf(g/√2))                                        approximate="none"
    GELU(g) = ½g(1 + tanh(√(2/π)(g + 0.044715g³)))                     approximate="tanh" (F.gelu's)

Gradient: ∂x = [dy·GELU(g), dy·h·GELU'(g)] ([..., 2F], value half then gate half). Computed in fp32 whatever
the storage dtype (fp64 in fp64), rounded once to x's dtype. The per-element math of the C++ and CUDA kernels is
csrc/include/fastdiff/gelu.h, of the Triton kernels triton_kernels/geglu.py.
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from fastdiff.ops import backend as _backend
from fastdiff.ops import common as C

APPROXIMATIONS = ("none", "tanh")
SUPPORTED = ("reference", "cpu", "cuda", "triton")
_FLOATS = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))


def reference(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """GEGLU in plain PyTorch: diffusers' expression h·F.gelu(g) on x cast to the accumulation dtype, the
    result cast back to x's dtype (for fp32 / fp64 exactly diffusers' `GEGLU` after its projection)."""
    acc = C.acc_dtype(x.dtype)
    h, g = x.to(acc).chunk(2, dim=-1)
    return (h * F.gelu(g, approximate=approximate)).to(x.dtype)


def backward_reference(grad_out: torch.Tensor, x: torch.Tensor, approximate: str) -> torch.Tensor:
    """∂x = [dy·GELU(g), dy·h·GELU'(g)] ([..., 2F], contiguous, x's dtype) in plain PyTorch (any device), with
    GELU' from aten's own gelu_backward."""
    acc = C.acc_dtype(x.dtype)
    h, g = x.to(acc).chunk(2, dim=-1)
    dy = grad_out.to(acc)
    dg = torch.ops.aten.gelu_backward(dy * h, g, approximate=approximate)
    return torch.cat([dy * F.gelu(g, approximate=approximate), dg], dim=-1).to(x.dtype)


def _check(x, approximate) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype not in _FLOATS:
        C.check_float("x", x)
    if x.dim() == 0 or x.shape[-1] % 2:
        raise ValueError(f"x must be [..., 2F] with an even last dim (the value and gate halves), got shape "
                         f"{tuple(x.shape)}")
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {APPROXIMATIONS} (as F.gelu's), got {approximate!r}")


# ----------------------------------------------------------------------------- torch.library registrations
# (fake kernels of the C++ ops fastdiff::geglu / geglu_backward, see _register.py; their autograd kernel is C++,
# csrc/geglu_autograd.cpp: ∂x = geglu_backward(∂out, x) on the CPU or CUDA kernel of x's device)


def fake(x, approximate):
    return x.new_empty(x.shape[:-1] + (x.shape[-1] // 2,))


def backward_fake(grad_out, x, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _triton():
    return importlib.import_module("fastdiff.triton_kernels.geglu")


class _TritonGEGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, approximate):
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        return _triton().geglu(x, approximate)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return _triton().geglu_backward(grad_out, x, ctx.approximate), None


# The backend per (requested backend, use_backend's choice, device type): `resolve` depends on nothing else (the
# backend table is fixed at import), and this op runs dozens of times per model forward.
_RESOLVED: dict = {}


def _resolve(x: torch.Tensor, backend: str | None) -> str:
    key = (backend, _backend.get_backend(), x.device.type)
    name = _RESOLVED.get(key)
    if name is None:
        name = _RESOLVED[key] = _backend.resolve("geglu", x.device, supported=SUPPORTED, backend=backend)
    return name


def geglu(x: torch.Tensor, approximate: str = "none", backend: str | None = None) -> torch.Tensor:
    """GEGLU: x[..., :F]·GELU(x[..., F:]) for x: [..., 2F] (any strides) -> [..., F] contiguous, in x's dtype.

    approximate: "none" (erf GELU) or "tanh" (F.gelu(approximate="tanh")). Differentiable on every backend.
    """
    _check(x, approximate)
    name = _resolve(x, backend)
    if name == "cpu" or name == "cuda":
        return torch.ops.fastdiff.geglu.default(x, approximate)
    if name == "reference":
        return reference(x, approximate)
    return _TritonGEGLU.apply(x, approximate)
