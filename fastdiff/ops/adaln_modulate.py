"""adaLN "modulate" of the DiT family (Peebles & Xie, "Scalable Diffusion Models with Transformers", §3.2
adaLN-Zero; diffusers' AdaLayerNormZero / AdaLayerNormZeroSingle / AdaLayerNormContinuous, PixArt's ada_norm_single,
the SD3 and Flux blocks); differentiable.

    h   = residual + gate·x                                  (residual form, optional; gate absent: 1)
    out = norm(h; ε)·w + b) · (1 + scale) + shift            norm ∈ {layer, rms} over the last dimension D

x, residual: [B, L, D]; w, b: optional [D] (the norm's elementwise affine; "rms" has no b); scale, shift, gate:
optional [B, D] or [B, 1, D] (one row per sample, the timestep/conditioning embedding) or [B, L, D] (per token),
each independently. "layer": n = (h − mean)·rstd with the biased variance, rstd = 1/√(Var + ε); "rms":
n = h·rstd with rstd = 1/√(mean(h²) + ε). Statistics in fp32 whatever the storage dtype (fp64 in fp64).

The gated residual is fused in front because that is where the model's dataflow allows it: DiT / SD3 / Flux blocks
compute `h = h + gate_msa·attn_out` and then `norm2(h)·(1 + scale_mlp) + shift_mlp`; the op reads x and residual
once and writes h and out once. Every backend returns (out, h, mean, rstd) with h an empty [0] tensor unless gated
and mean, rstd: [B, L] in the accumulation dtype; the public `adaln_modulate` returns out, or (h, out) when gated.
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from fastdiff.ops import backend as _backend
from fastdiff.ops import common as C

NORMS = ("layer", "rms")
SUPPORTED = ("reference", "cpu", "cuda", "triton")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _rows(p: torch.Tensor) -> torch.Tensor:
    """A [B, D] per-sample argument as [B, 1, D]; [B, 1, D] and [B, L, D] as they are."""
    return p[:, None] if p.dim() == 2 else p


def reference(x, scale, shift, weight, bias, residual, gate, rms: bool, eps: float):
    """adaLN modulate in plain PyTorch: the gated residual, F.layer_norm or the RMSNorm formula in the accumulation
    dtype, the norm's affine map, then ·(1 + scale) and + shift.

    Returns (out [B, L, D] in x's dtype, h [B, L, D] (gated) or empty [0], mean [B, L], rstd [B, L]); the stored h
    (rounded to x's dtype) is what is normalised, as the next block reads it.
    """
    acc = C.acc_dtype(x.dtype)
    if gate is not None:
        h = (residual.to(acc) + _rows(gate).to(acc) * x.to(acc)).to(x.dtype)
        h_out = h
    else:
        h, h_out = x, x.new_empty(0)
    ha = h.to(acc)
    d = x.shape[-1]
    with torch.no_grad():
        hd = ha.detach()
        if rms:
            mean = torch.zeros(hd.shape[:-1], dtype=acc, device=x.device)
            rstd = torch.rsqrt(hd.square().sum(-1) / max(d, 1) + eps)
        else:
            if hd.numel():
                var, mean = torch.var_mean(hd, dim=-1, unbiased=False)
            else:  # no rows, or D = 0: mean 0, rstd 1/√ε
                var = mean = torch.zeros(hd.shape[:-1], dtype=acc, device=x.device)
            rstd = torch.rsqrt(var + eps)
    if d == 0:
        n = ha
    elif rms:
        n = ha * torch.rsqrt(ha.square().mean(-1, keepdim=True) + eps)
    else:
        n = F.layer_norm(ha, (d,), eps=eps)
    if weight is not None:
        n = n * weight.to(acc)
    if bias is not None:
        n = n + bias.to(acc)
    if scale is not None:
        n = n * (1 + _rows(scale).to(acc))
    if shift is not None:
        n = n + _rows(shift).to(acc)
    return n.to(x.dtype), h_out, mean, rstd


def _reduce_like(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A per-row gradient v [B, L, D] summed to the shape of the argument p ([B, D], [B, 1, D] or [B, L, D])."""
    if p.dim() == 2:
        return v.sum(1)
    return v if p.shape[1] == v.shape[1] and p.shape[1] != 1 else v.sum(1, keepdim=True)


def backward_reference(grad_out, grad_h, h, x, gate, scale, shift, weight, bias, mean, rstd, rms: bool):
    """Gradients (∂h, ∂x, ∂gate, ∂scale, ∂shift, ∂w, ∂b) of adaLN modulate from the saved statistics, in plain
    PyTorch (any device); h is the normalised input (the forward's h when gated, else x).

    With n = (h − mean)·rstd, y = n·w + b, dy = g·(1 + scale), dn = dy·w (csrc/include/fastdiff/adaln.h):
    ∂scale = Σ g·y, ∂shift = Σ g (over L for a per-sample argument), ∂w = Σ dy·n, ∂b = Σ dy over all rows,
    ∂h = rstd·(dn − mean_D(dn) − n·mean_D(dn·n)) (rms: without mean_D(dn)) plus grad_h, and in the gated form
    ∂x = ∂h·gate, ∂gate = Σ ∂h·x (∂residual = ∂h). Absent arguments get an empty [0] tensor; all in h's dtype.
    """
    acc = C.acc_dtype(h.dtype)
    d = h.shape[-1]
    g = grad_out.to(acc)
    n = (h.to(acc) - mean.to(acc)[..., None]) * rstd.to(acc)[..., None]
    w = weight.to(acc) if weight is not None else 1.0
    b = bias.to(acc) if bias is not None else 0.0
    s1 = 1 + _rows(scale).to(acc) if scale is not None else 1.0
    dy = g * s1
    dn = dy * w
    m1 = 0.0 if rms else dn.sum(-1, keepdim=True) / max(d, 1)
    m2 = (dn * n).sum(-1, keepdim=True) / max(d, 1)
    dh = rstd.to(acc)[..., None] * (dn - m1 - n * m2)
    if grad_h is not None and grad_h.numel():
        dh = dh + grad_h.to(acc)
    dt, empty = h.dtype, h.new_empty(0)
    d_x = (dh * _rows(gate).to(acc)).to(dt) if gate is not None else empty
    d_gate = _reduce_like(dh * x.to(acc), gate).to(dt) if gate is not None else empty
    d_scale = _reduce_like(g * (n * w + b), scale).to(dt) if scale is not None else empty
    d_shift = _reduce_like(g, shift).to(dt) if shift is not None else empty
    d_w = (dy * n).sum((0, 1)).to(dt) if weight is not None else empty
    d_b = dy.sum((0, 1)).to(dt) if bias is not None else empty
    return dh.to(dt), d_x, d_gate, d_scale, d_shift, d_w, d_b


def _bad_float(name: str, p, x: torch.Tensor) -> None:
    """Raise the error for an argument that is not a tensor of x's dtype on x's device."""
    C.check_float(name, p, like=x)


def _check(x, scale, shift, weight, bias, residual, gate, norm, eps) -> bool:
    """Every argument checked before anything runs (errors name the argument); returns rms. Lean on purpose: the
    op is called dozens of times per model forward, so each tensor costs one dtype and one device comparison."""
    if not isinstance(x, torch.Tensor) or x.dtype not in _FLOATS:
        C.check_float("x", x)
    if x.dim() != 3:
        raise ValueError(f"x must be [B, L, D], got shape {tuple(x.shape)}")
    if norm == "layer":
        rms = False
    elif norm == "rms":
        rms = True
        if bias is not None:
            raise ValueError('bias must be None with norm="rms" (RMSNorm has no bias)')
    else:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if residual is None and gate is not None:
        raise ValueError("residual must be given too: the gated form h = residual + gate·x takes both")
    dtype, device = x.dtype, x.device
    b, l, d = x.shape
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if not isinstance(p, torch.Tensor) or p.dtype != dtype or p.device != device:
            _bad_float(name, p, x)
        if p.shape != (d,):
            raise ValueError(f"{name} must have shape [D] = [{d}], got {tuple(p.shape)}")
    for name, p in (("scale", scale), ("shift", shift), ("gate", gate)):
        if p is None:
            continue
        if not isinstance(p, torch.Tensor) or p.dtype != dtype or p.device != device:
            _bad_float(name, p, x)
        shape = p.shape
        if not (shape == (b, d) or (len(shape) == 3 and shape[0] == b and shape[2] == d and shape[1] in (1, l))):
            raise ValueError(f"{name} must have shape [B, D], [B, 1, D] or [B, L, D] with [B, L, D] = "
                             f"[{b}, {l}, {d}], got {tuple(shape)}")
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or residual.dtype != dtype or residual.device != device:
            _bad_float("residual", residual, x)
        if residual.shape != x.shape:
            raise ValueError(f"residual must have x's shape [B, L, D] = [{b}, {l}, {d}], got {tuple(residual.shape)}")
    return rms


# ----------------------------------------------------------------------------- torch.library registrations
# (fake kernels and the autograd formula of the C++ ops fastdiff::adaln_modulate / adaln_modulate_backward; see
# _register.py)


def fake(x, scale, shift, weight, bias, residual, gate, rms, eps):
    b, l, d = x.shape
    stats = lambda: x.new_empty((b, l), dtype=C.acc_dtype(x.dtype))
    return (x.new_empty((b, l, d)), x.new_empty((b, l, d)) if gate is not None else x.new_empty(0), stats(),
            stats())


def backward_fake(grad_out, grad_h, h, x, gate, scale, shift, weight, bias, mean, rstd, rms):
    like = lambda p: h.new_empty(p.shape) if p is not None else h.new_empty(0)
    per_row = lambda p: h.new_empty(h.shape) if p is not None else h.new_empty(0)
    return (h.new_empty(h.shape), per_row(gate), like(gate), like(scale), like(shift), like(weight), like(bias))


def setup_context(ctx, inputs, output):
    x, scale, shift, weight, bias, residual, gate, rms, _eps = inputs
    _, h, mean, rstd = output
    gated = gate is not None
    ctx.save_for_backward(h if gated else x, x if gated else None, gate, scale, shift, weight, bias, mean, rstd)
    ctx.rms = rms


def _triton_backward():
    return importlib.import_module("fastdiff.triton_kernels.adaln_modulate").adaln_modulate_backward


def _backward_fn(device: torch.device):
    """The backward kernel for `device`: C++ on CPU; on CUDA the Triton kernel where Triton runs, else the plain
    PyTorch formula (backward_reference)."""
    if device.type == "cpu":
        return torch.ops.fastdiff.adaln_modulate_backward
    if _backend.available_backends()["triton"].available:
        return _triton_backward()
    return backward_reference


def _input_grads(ctx, backward_fn, grad_out, grad_h):
    """The autograd answer for (x, scale, shift, weight, bias, residual, gate, rms, eps) from `backward_fn` (None:
    the kernel for the saved tensors' device). ctx.saved_tensors is unpacked once (non-reentrant checkpointing
    allows no more)."""
    h, x, gate, scale, shift, weight, bias, mean, rstd = ctx.saved_tensors
    backward_fn = backward_fn or _backward_fn(h.device)
    if grad_out is None:
        grad_out = torch.zeros_like(h)
    if grad_h is not None and grad_h.numel() == 0:
        grad_h = None
    d_h, d_x, d_gate, d_scale, d_shift, d_w, d_b = backward_fn(grad_out, grad_h, h, x, gate, scale, shift, weight,
                                                               bias, mean, rstd, ctx.rms)
    gated = gate is not None
    grads = (d_x if gated else d_h, d_scale, d_shift, d_w, d_b, d_h if gated else None, d_gate)
    present = (True, scale is not None, shift is not None, weight is not None, bias is not None, gated, gated)
    return tuple(g if need and ok else None
                 for g, need, ok in zip(grads, ctx.needs_input_grad, present)) + (None, None)


def backward(ctx, grad_out, grad_h, _grad_mean, _grad_rstd):
    return _input_grads(ctx, None, grad_out, grad_h)


class _TritonAdaLN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, shift, weight, bias, residual, gate, rms, eps):
        out, h, mean, rstd = _backend.implementation("adaln_modulate", "triton", reference)(
            x, scale, shift, weight, bias, residual, gate, rms, eps)
        gated = gate is not None
        ctx.save_for_backward(h if gated else x, x if gated else None, gate, scale, shift, weight, bias, mean, rstd)
        ctx.rms = rms
        return out, h

    @staticmethod
    def backward(ctx, grad_out, grad_h):
        return _input_grads(ctx, _triton_backward(), grad_out, grad_h)


class _CppAdaLN(torch.autograd.Function):
    """The C++ op with the same formula as its register_autograd registration, for eager calls: torch.library's
    Python autograd wrapper costs ~30 µs forward and ~60 µs backward a call on the 2-core CPU, several times the
    kernels at a tiny model's shapes."""

    @staticmethod
    def forward(ctx, x, scale, shift, weight, bias, residual, gate, rms, eps):
        with torch._C._AutoDispatchBelowAutograd():
            out, h, mean, rstd = torch.ops.fastdiff.adaln_modulate.default(x, scale, shift, weight, bias, residual,
                                                                           gate, rms, eps)
        gated = gate is not None
        ctx.save_for_backward(h if gated else x, x if gated else None, gate, scale, shift, weight, bias, mean, rstd)
        ctx.rms = rms
        return out, h

    @staticmethod
    def backward(ctx, grad_out, grad_h):
        return _input_grads(ctx, None, grad_out, grad_h)


def adaln_modulate(x: torch.Tensor, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                   weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, *, norm: str = "layer",
                   eps: float = 1e-6, residual: torch.Tensor | None = None, gate: torch.Tensor | None = None,
                   backend: str | None = None):
    """adaLN modulate: out = (norm(h)·weight + bias)·(1 + scale) + shift over the last dimension D.

    x: [B, L, D] (any strides); scale, shift: optional [B, D], [B, 1, D] or [B, L, D]; weight, bias: optional [D]
    (norm="rms" takes no bias); norm "layer" (LayerNorm, biased variance) or "rms" (RMSNorm); eps as the norm's.
    Residual form (DiT / SD3 / Flux blocks): with residual [B, L, D] and an optional gate ([B, D], [B, 1, D] or
    [B, L, D]; absent: 1, the plain residual of pre-norm blocks), h = residual + gate·x is normalised in place of x
    and the op returns (h, out); otherwise it returns out.
    Every tensor must have x's dtype and device; out (and h) have x's dtype, statistics are fp32 (fp64 in fp64).
    """
    rms = _check(x, scale, shift, weight, bias, residual, gate, norm, eps)
    if residual is not None and gate is None:  # the kernels take the gated form; a [B, 1, D] row of ones is cheap
        gate = torch.ones((x.shape[0], 1, x.shape[2]), dtype=x.dtype, device=x.device)
    name = _resolve(x, backend)
    args = (x, scale, shift, weight, bias, residual, gate, rms, float(eps))
    if name == "reference":
        out, h = reference(*args)[:2]
    elif name == "triton":
        out, h = _TritonAdaLN.apply(*args)
    elif torch.compiler.is_compiling():  # traced through the op's fake kernel and registered autograd formula
        out, h = torch.ops.fastdiff.adaln_modulate.default(*args)[:2]
    elif _needs_grad(args):
        out, h = _CppAdaLN.apply(*args)
    else:
        # Inference: straight to the C++ kernel, past the Python autograd kernel of register_autograd (~10 µs a
        # call on the 2-core CPU, as much as the whole op costs at a tiny model's [2, 64, 32]).
        with torch._C._AutoDispatchBelowAutograd():
            out, h = torch.ops.fastdiff.adaln_modulate.default(*args)[:2]
    return out if residual is None else (h, out)


_RESOLVED: dict = {}


def _resolve(x: torch.Tensor, backend: str | None) -> str:
    """backend.resolve, remembered per (requested backend, current choice, device type): the answer depends on
    nothing else within a process (backend._STATUS is fixed at import)."""
    key = (backend, _backend.get_backend(), x.device.type)
    name = _RESOLVED.get(key)
    if name is None:
        name = _RESOLVED[key] = _backend.resolve("adaln_modulate", x.device, supported=SUPPORTED, backend=backend)
    return name


def _needs_grad(args) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args[:7])
