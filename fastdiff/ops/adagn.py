"""Adaptive group normalisation, AdaGN (Dhariwal & Nichol, "Diffusion Models Beat GANs", ADM §3); differentiable.

    out = act(GroupNorm(x; G, ε, γ, β) · (1 + scale) + shift),   act ∈ {none, silu}

x: [N, C, *spatial]; γ, β: [C]; scale, shift: optional [N, C] (one value per sample and channel, ADM's
`use_scale_shift_norm` with the timestep embedding split in two). Statistics (mean and biased variance over each
group's C/G channels and all spatial positions) in fp32 whatever the storage dtype (fp64 computes in fp64).

Every backend returns (out, mean, rstd) with mean, rstd: [N, G] in the accumulation dtype; the public `adagn`
returns out. The fused kernels fold the whole op into one affine map per (sample, channel),
out = act(A·x + B) with A = rstd·γ·(1 + scale), B = (β − mean·rstd·γ)(1 + scale) + shift (groupnorm.h).
"""
from __future__ import annotations

import importlib
import math

import torch
import torch.nn.functional as F

from fastdiff.ops import backend as _backend
from fastdiff.ops import common as C

ACTS = ("none", "silu")
SUPPORTED = ("reference", "cpu", "cuda", "triton")
# The cpu backend reduces a group of more than this many values (C/G·S) in parallel slices of at most this many,
# merged with Chan's formula (csrc/cpu/adagn.cpp, kSplitElements), so batch 1 at high resolution uses every core.
CPU_SPLIT_ELEMENTS = 4096
# Channels-last x is always reduced in parallel position slices of about this many values (kSliceElementsCl).
CPU_CL_SLICE_ELEMENTS = 32768


def reference(x, weight, bias, scale, shift, num_groups: int, eps: float, silu: bool):
    """AdaGN in plain PyTorch: F.group_norm in the accumulation dtype, then (1 + scale), shift and SiLU.

    Returns (out [x's shape and dtype], mean [N, G], rstd [N, G]) with rstd = 1/√(Var + ε).
    """
    acc = C.acc_dtype(x.dtype)
    n, c = x.shape[0], x.shape[1]
    xa = x.to(acc)
    group_size = math.prod(x.shape[1:]) // num_groups
    with torch.no_grad():
        var, mean = torch.var_mean(xa.detach().reshape(n, num_groups, group_size), dim=-1, unbiased=False)
    if group_size > 1:
        h = F.group_norm(xa, num_groups, weight.to(acc), bias.to(acc), eps)
    else:  # one value per group (C/G = 1, H·W = 1): x̂ = 0, which F.group_norm refuses to compute
        h = (xa - xa) * weight.to(acc).reshape((1, c) + (1,) * (x.dim() - 2))
        h = h + bias.to(acc).reshape((1, c) + (1,) * (x.dim() - 2))
    bshape = (n, c) + (1,) * (x.dim() - 2)
    if scale is not None:
        h = h * (1 + scale.to(acc).reshape(bshape))
    if shift is not None:
        h = h + shift.to(acc).reshape(bshape)
    if silu:
        h = F.silu(h)
    return h.to(x.dtype), mean, torch.rsqrt(var + eps)


def backward_reference(grad_out, x, weight, bias, scale, shift, mean, rstd, num_groups: int, silu: bool):
    """Gradients (x, γ, β, scale, shift) of AdaGN from the saved statistics, in plain PyTorch (any device).

    With z = y·(1 + scale) + shift, y = x̂γ + β, x̂ = (x − mean)·rstd and dz = grad·act'(z):
    ∂scale = Σ_s dz·y, ∂shift = Σ_s dz, ∂γ = Σ_{n,s} dz(1 + scale)x̂, ∂β = Σ_{n,s} dz(1 + scale),
    ∂x = rstd·(dx̂ − mean_g(dx̂) − x̂·mean_g(dx̂·x̂)) with dx̂ = dz(1 + scale)γ. Returns all five ([N, C] for
    scale / shift even when absent) in the dtypes of x, weight, bias, and x for scale / shift.
    """
    acc = C.acc_dtype(x.dtype)
    n, c = x.shape[0], x.shape[1]
    g = num_groups
    xa = x.to(acc).reshape(n, g, c // g, -1)
    w = weight.to(acc).reshape(1, g, c // g, 1)
    b = bias.to(acc).reshape(1, g, c // g, 1)
    s1 = (1 + scale.to(acc)).reshape(n, g, c // g, 1) if scale is not None else torch.ones(
        (n, g, c // g, 1), dtype=acc, device=x.device)
    sh = shift.to(acc).reshape(n, g, c // g, 1) if shift is not None else 0
    m, r = mean.to(acc).reshape(n, g, 1, 1), rstd.to(acc).reshape(n, g, 1, 1)
    xhat = (xa - m) * r
    y = xhat * w + b
    dz = grad_out.to(acc).reshape(n, g, c // g, -1)
    if silu:
        z = y * s1 + sh
        sig = torch.sigmoid(z)
        dz = dz * sig * (1 + z * (1 - sig))
    d_scale = (dz * y).sum(-1).reshape(n, c)
    d_shift = dz.sum(-1).reshape(n, c)
    dy = dz * s1
    d_w = (dy * xhat).sum((0, 3)).reshape(c)
    d_b = dy.sum((0, 3)).reshape(c)
    dxhat = dy * w
    dx = r * (dxhat - dxhat.mean((2, 3), keepdim=True) - xhat * (dxhat * xhat).mean((2, 3), keepdim=True))
    return (dx.reshape(x.shape).to(x.dtype), d_w.to(weight.dtype), d_b.to(bias.dtype), d_scale.to(x.dtype),
            d_shift.to(x.dtype))


_FLOATS = C._FLOATS


def _check(x, weight, bias, num_groups, eps, scale, shift, act) -> bool:
    """Every argument's check; returns act == "silu". The common valid call is accepted by the first test (a few
    attribute reads: the public function runs dozens of times per model forward); anything else goes through
    `_check_all`, whose messages name the argument."""
    if (type(x) is torch.Tensor and type(weight) is torch.Tensor and type(bias) is torch.Tensor
            and type(num_groups) is int and num_groups >= 1 and (act == "silu" or act == "none")
            and type(eps) is float and eps > 0):
        dt, dim, shape = x.dtype, x.dim(), x.shape
        if dt in _FLOATS and dim >= 2 and weight.dtype is dt and bias.dtype is dt:
            c = shape[1]
            if (c % num_groups == 0 and weight.shape == (c,) and bias.shape == (c,)
                    and weight.device == x.device and bias.device == x.device
                    and (scale is None or _fast_nc(scale, x, c)) and (shift is None or _fast_nc(shift, x, c))):
                return act == "silu"
    return _check_all(x, weight, bias, num_groups, eps, scale, shift, act)


def _fast_nc(p, x, c) -> bool:
    return (type(p) is torch.Tensor and p.dtype is x.dtype and p.shape == (x.shape[0], c)
            and p.device == x.device)


def _check_all(x, weight, bias, num_groups, eps, scale, shift, act) -> bool:
    C.check_float("x", x)
    if x.dim() < 2:
        raise ValueError(f"x must be [N, C, *spatial] with at least 2 dims, got shape {tuple(x.shape)}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    c = x.shape[1]
    if c % num_groups != 0:
        raise ValueError(f"the channel count C = {c} of x (shape {tuple(x.shape)}) is not divisible by "
                         f"num_groups = {num_groups}")
    for name, p in (("weight", weight), ("bias", bias)):
        C.check_float(name, p, like=x)
        if p.shape != (c,):
            raise ValueError(f"{name} must have shape [C] = [{c}], got {tuple(p.shape)}")
    for name, p in (("scale", scale), ("shift", shift)):
        if p is None:
            continue
        C.check_float(name, p, like=x)
        if p.shape != (x.shape[0], c):
            raise ValueError(f"{name} must have shape [N, C] = [{x.shape[0]}, {c}] (one value per sample and "
                             f"channel), got {tuple(p.shape)}")
    try:
        ok = float(eps) > 0
    except (TypeError, ValueError):
        raise TypeError(f"eps must be a positive float, got {eps!r}") from None
    if not ok:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if act not in ACTS:
        raise ValueError(f"act must be one of {ACTS}, got {act!r}")
    return act == "silu"


# ----------------------------------------------------------------------------- torch.library registrations
# (fake kernels and the autograd formula of the C++ ops fastdiff::adagn / adagn_backward; see _register.py)


def memory_format(x) -> torch.memory_format:
    """The memory format of adagn's outputs (and of the x gradient) for input x, the C++ kernels' rule
    (csrc/include/fastdiff/adagn_checks.h): channels_last / channels_last_3d when x is stored that way and not
    also contiguous (a size-1 C or spatial extent makes both hold), else contiguous."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def fake(x, weight, bias, scale, shift, num_groups, eps, silu):
    stats = lambda: x.new_empty((x.shape[0], num_groups), dtype=C.acc_dtype(x.dtype))
    return torch.empty_like(x, memory_format=memory_format(x)), stats(), stats()


def backward_fake(grad_out, x, weight, bias, scale, shift, mean, rstd, num_groups, silu):
    n, c = x.shape[0], x.shape[1]
    return (torch.empty_like(x, memory_format=memory_format(x)), torch.empty_like(weight),
            torch.empty_like(bias), x.new_empty((n, c)), x.new_empty((n, c)))


def setup_context(ctx, inputs, output):
    x, weight, bias, scale, shift, num_groups, _eps, silu = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
    ctx.num_groups, ctx.silu = num_groups, silu


def _triton_backward():
    return importlib.import_module("fastdiff.triton_kernels.adagn").adagn_backward


def _backward_fn(device: torch.device):
    """The backward kernel for `device`: C++ on CPU; on CUDA the Triton kernels where Triton runs, else the plain
    PyTorch formula."""
    if device.type == "cpu":
        return torch.ops.fastdiff.adagn_backward
    if _backend.available_backends()["triton"].available:
        return _triton_backward()
    return backward_reference


def _input_grads(ctx, backward_fn, grad_out):
    """The autograd answer for (x, weight, bias, scale, shift, num_groups, eps, silu) from `backward_fn`
    (None: the kernel for x's device). ctx.saved_tensors is unpacked once (non-reentrant checkpointing allows no
    more)."""
    x, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
    backward_fn = backward_fn or _backward_fn(x.device)
    grads = backward_fn(grad_out, x, weight, bias, scale, shift, mean, rstd, ctx.num_groups, ctx.silu)
    present = (True, True, True, scale is not None, shift is not None)
    return tuple(g if need and ok else None
                 for g, need, ok in zip(grads, ctx.needs_input_grad, present)) + (None, None, None)


class _TritonAdaGN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, num_groups, eps, silu):
        out, mean, rstd = _backend.implementation("adagn", "triton", reference)(
            x, weight, bias, scale, shift, num_groups, eps, silu)
        ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
        ctx.num_groups, ctx.silu = num_groups, silu
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return _input_grads(ctx, _triton_backward(), grad_out)


def backward(ctx, grad_out, _grad_mean, _grad_rstd):
    return _input_grads(ctx, None, grad_out)  # every backward kernel reads grad_out in any layout


# (requested backend, x.is_cpu, x.is_cuda) -> resolved backend: _backend.resolve's answer depends only on these
# (the availability table is fixed at import), so it is looked up once per kind of call.
_RESOLVED: dict = {}
_OP = []  # [torch.ops.fastdiff.adagn.default], looked up on first use (fastdiff._C may be absent)


def _resolve(x, backend):
    requested = backend if backend is not None else _backend.get_backend()
    key = (requested, x.is_cpu, x.is_cuda)
    name = _RESOLVED.get(key)
    if name is None:
        name = _backend.resolve("adagn", x.device, supported=SUPPORTED, backend=backend)
        if (key[1] or key[2]) and not (name == "triton" and key[1]):  # the interpreter's answer reads the env
            _RESOLVED[key] = name
    return name


def adagn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_groups: int, eps: float = 1e-5,
          scale: torch.Tensor | None = None, shift: torch.Tensor | None = None, act: str = "silu",
          backend: str | None = None) -> torch.Tensor:
    """AdaGN: act(GroupNorm(x; num_groups, eps, weight, bias) · (1 + scale) + shift).

    x: [N, C, *spatial] in any layout; weight, bias: [C]; scale, shift: optional [N, C]; all of x's dtype and
    device; act "silu" or "none". Returns x's shape and dtype, in x's memory format when x is contiguous or
    channels_last (4-D) / channels_last_3d (5-D) on the cpu, cuda and triton backends (`memory_format`), contiguous
    for other strides. Differentiable in x, weight, bias, scale and shift.
    """
    compiling = torch.compiler.is_compiling()
    # The C++ op checks every tensor argument (adagn_checks.h) before it runs anything, so when x is a plain tensor
    # and the Python-only options are plain, the tensors' checks are left to it; a failure there is re-raised as
    # _check_all's ValueError / TypeError naming the argument. Every other call is checked here first.
    plain = (type(x) is torch.Tensor and type(num_groups) is int and type(eps) is float
             and (act == "silu" or act == "none") and not compiling)
    if plain:
        name = _resolve(x, backend)
        plain = name == "cpu" or name == "cuda"
    if not plain:
        _check(x, weight, bias, num_groups, eps, scale, shift, act)
        name = _resolve(x, backend) if not compiling else _backend.resolve("adagn", x.device, supported=SUPPORTED,
                                                                             backend=backend)
    args = (x, weight, bias, scale, shift, num_groups, float(eps), act == "silu")
    if name == "cpu" or name == "cuda":
        if not _OP:
            _OP.append(torch.ops.fastdiff.adagn.default)
        try:
            if compiling or (torch.is_grad_enabled() and (
                    x.requires_grad or weight.requires_grad or bias.requires_grad
                    or (scale is not None and scale.requires_grad) or (shift is not None and shift.requires_grad))):
                return _OP[0](*args)[0]
            # Nothing to differentiate: skip the Python autograd kernel of register_autograd (several µs a call).
            with torch._C._AutoDispatchBelowAutograd():
                return _OP[0](*args)[0]
        except (RuntimeError, TypeError, AttributeError):
            if plain:
                _check_all(x, weight, bias, num_groups, eps, scale, shift, act)
            raise
    if name == "reference":
        return reference(*args)[0]
    return _TritonAdaGN.apply(*args)
