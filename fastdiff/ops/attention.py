"""Multi-head attention in diffusers' layout (Vaswani et al. 2017, "Attention Is All You Need", eq. 1):
what diffusers' `Attention` with `AttnProcessor2_0` computes between its q/k/v projections and `to_out`, for
self-attention (k, v from the same tokens as q) and cross-attention (k, v from text tokens, Lk ≠ Lq); differentiable.

q: [B, Lq, H·D], k, v: [B, Lk, H·D], any strides (e.g. `qkv.chunk(3, -1)` of a fused projection); head h of a
token is channels [h·D, (h+1)·D) (diffusers' `view(B, L, H, D)`). Per batch element and head,

    out = softmax(s · q kᵀ) v,    s = 1/√D unless given,

softmax statistics in fp32 (fp64 for fp64), out: [B, Lq, H·D] contiguous. No mask: callers with a mask keep
torch's path.

Backends (docs/architecture.md, "Backends"); this op is the exception to "cuda = fastdiff._C": a flash-attention
kernel of fastdiff's own in C++/CUDA would not beat torch's, so

- ``reference``: plain PyTorch (einsum, fp32 softmax), the specification;
- ``cpu``: torch's `F.scaled_dot_product_attention` (SDPA) on [B, H, L, D] *views* of q, k, v. In this layout the
  head dimension is the innermost, unit-stride axis, so SDPA's fused CPU flash kernel reads the views in place
  (contiguous [B, H, L, D] copies were slower in every case measured on a 2-core EPYC, by 2-70 %, unlike
  guided-diffusion's layout, where positions are innermost and `qkv_attention`'s `cpu` must copy). So `cpu` runs
  the very kernel diffusers' eager AttnProcessor2_0 runs and is as fast, not faster (bench_attention.py). Its
  output is laid out [B, Lq, H, D], so the result is [B, Lq, H·D] without a copy. Inputs whose last axis is
  strided are copied first;
- ``cuda``: the same SDPA call on CUDA tensors, i.e. torch's flash-attention 2 / memory-efficient / cuDNN kernels,
  whichever torch picks (not fastdiff._C, so it needs no CUDA build of the extension);
- ``triton``: fastdiff's flash-attention kernels (triton_kernels/attention.py, shared with `qkv_attention`):
  forward saving the row log-sum-exp, backward recomputing P from it;
- ``auto``: ``cpu`` on CPU; on CUDA ``cuda`` where torch's flash / memory-efficient kernels take the inputs
  (fp16/bf16 for flash, fp32 for memory-efficient; D ≤ 256 and a multiple of 8), since that is what diffusers
  itself runs and fastdiff's kernel must not be slower than stock; else ``triton`` (fp64, other head
  dimensions), else ``reference``. `attention_plan` says which and why.
"""
from __future__ import annotations

import importlib
import math

import torch
import torch.nn.functional as F

from fastdiff.ops import backend as _backend
from fastdiff.ops import common as C

SUPPORTED = ("reference", "cpu", "cuda", "triton")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SDPA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # flash (fp16/bf16) and memory-efficient (+ fp32)
MAX_SDPA_HEAD_DIM = 256  # FlashAttention-2's largest head dimension (torch's flash and memory-efficient kernels)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float | None = None):
    """softmax(s·q kᵀ) v per head in plain PyTorch: logits, softmax and both products in the accumulation dtype
    (fp32; fp64 for fp64), P rounded to the storage dtype before the product with v (as the flash kernels do);
    returns [B, Lq, H·D] contiguous in q's dtype."""
    b, lq, width = q.shape
    d = width // heads
    s = 1 / math.sqrt(d) if scale is None else scale
    acc = C.acc_dtype(q.dtype)
    qh, kh, vh = (x.unflatten(-1, (heads, d)).to(acc) for x in (q, k, v))  # [B, L, H, D]
    logits = torch.einsum("bqhd,bkhd->bhqk", qh, kh) * s
    p = torch.softmax(logits, dim=-1).to(q.dtype).to(acc)
    out = torch.einsum("bhqk,bkhd->bqhd", p, vh)
    return out.reshape(b, lq, width).to(q.dtype)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float | None = None):
    """The `cpu` and `cuda` backends: torch's F.scaled_dot_product_attention on [B, H, L, D] views of q, k, v
    (autograd-capable); the fused kernels want a unit-stride head dimension, so an input without one is copied.

    Called dozens of times per model forward, on tiny tensors in tests: when nothing needs a gradient the views
    are one as_strided each and the [B, Lq, H, D]-laid-out result one more, instead of diffusers' view + transpose
    per tensor and transpose + reshape back (~1 µs per view op on this CPU); under autograd, plain views
    (as_strided's backward scatters into a buffer the size of the whole storage), and under torch.compile."""
    b, lq, width = q.shape
    d = width // heads
    qs, ks, vs = q.stride(), k.stride(), v.stride()
    if qs[2] != 1 or ks[2] != 1 or vs[2] != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        qs, ks, vs = q.stride(), k.stride(), v.stride()
    lk = k.shape[1]
    if (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
            or torch.compiler.is_compiling()):  # dynamo cannot trace storage_offset(); views cost nothing there
        out = F.scaled_dot_product_attention(q.view(b, lq, heads, d).transpose(1, 2),
                                             k.view(b, lk, heads, d).transpose(1, 2),
                                             v.view(b, lk, heads, d).transpose(1, 2), scale=scale)
        return out.transpose(1, 2).reshape(b, lq, width)
    out = F.scaled_dot_product_attention(q.as_strided((b, heads, lq, d), (qs[0], d, qs[1], 1), q.storage_offset()),
                                         k.as_strided((b, heads, lk, d), (ks[0], d, ks[1], 1), k.storage_offset()),
                                         v.as_strided((b, heads, lk, d), (vs[0], d, vs[1], 1), v.storage_offset()),
                                         scale=scale)
    if out.stride() == (lq * width, d, width, 1):  # the fused kernels' [B, Lq, H, D] memory: no copy
        return out.as_strided((b, lq, width), (lq * width, width, 1))
    return out.transpose(1, 2).reshape(b, lq, width)


def _kernels():
    return importlib.import_module("fastdiff.triton_kernels.attention")


class _TritonAttention(torch.autograd.Function):
    """Flash-attention forward (saves the row log-sum-exp) and backward (recomputes P from it)."""

    @staticmethod
    def forward(ctx, q, k, v, heads, scale):
        s = 1 / math.sqrt(q.shape[-1] // heads) if scale is None else scale
        out, lse = _kernels().attention_forward(q, k, v, heads, s)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.heads, ctx.scale = heads, s
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _kernels().attention_backward(q, k, v, out, lse, grad, ctx.heads, ctx.scale)
        return dq, dk, dv, None, None


def _check(q, k, v, heads, scale) -> int:
    """Validate the arguments; returns the head dimension D. One combined test for valid arguments (the op runs
    dozens of times per model forward), then `_diagnose` for the message naming the argument."""
    try:
        qs, ks, dtype = q.shape, k.shape, q.dtype
        ok = (len(qs) == 3 and type(heads) is int and heads > 0 and qs[2] > 0 and qs[2] % heads == 0
              and dtype in _FLOATS and k.dtype == dtype and v.dtype == dtype and len(ks) == 3 and ks[0] == qs[0]
              and ks[1] > 0 and ks[2] == qs[2] and v.shape == ks and k.device == q.device
              and v.device == q.device and (scale is None or _finite_number(scale)))
    except AttributeError:  # not a tensor
        ok = False
    if not ok:
        _diagnose(q, k, v, heads, scale)
    return qs[2] // heads


def _finite_number(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def _diagnose(q, k, v, heads, scale) -> None:
    """Raise the error (ValueError or TypeError) that names the first bad argument."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if q.dtype not in _FLOATS:
        raise TypeError(f"q must be float16, bfloat16, float32 or float64, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        name, x = ("k", k) if k.dtype != q.dtype else ("v", v)
        raise TypeError(f"{name} has dtype {x.dtype} but q has {q.dtype}; cast explicitly")
    if k.device != q.device or v.device != q.device:
        name, x = ("k", k) if k.device != q.device else ("v", v)
        raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    if type(heads) is not int or heads < 1:  # bool is not an int here
        raise ValueError(f"heads must be a positive int, got {heads!r}")
    qs, ks = q.shape, k.shape
    if len(qs) != 3:
        raise ValueError(f"q must be [B, Lq, H*D] (3 dims), got shape {tuple(qs)}")
    width = qs[2]
    if width == 0 or width % heads:
        raise ValueError(f"the width of q (dim 2) must be a positive multiple of heads = {heads}, got {width} "
                         f"(q shape {tuple(qs)})")
    if len(ks) != 3 or ks[0] != qs[0] or ks[2] != width:
        raise ValueError(f"k must be [B, Lk, H*D] = [{qs[0]}, Lk, {width}] like q (same batch and width), got "
                         f"shape {tuple(ks)}")
    if v.shape != ks:
        raise ValueError(f"v must have k's shape {tuple(ks)}, got {tuple(v.shape)}")
    if ks[1] == 0:
        raise ValueError(f"k and v must have at least one token (Lk >= 1), got shape {tuple(ks)}: a softmax over no "
                         "keys is undefined")
    if scale is not None and not _finite_number(scale):
        raise ValueError(f"scale must be None (1/sqrt(D)) or a finite float, got {scale!r}")
    raise AssertionError("_diagnose found no bad argument")


def _plan(device: torch.device, dtype: torch.dtype, d: int, backend: str | None) -> tuple[str, str]:
    """(backend, reason) for inputs on `device` of `dtype` with head dimension d; a backend asked for by name that
    cannot run raises BackendUnavailableError (docs/architecture.md, "Backends")."""
    name = _backend.get_backend() if backend is None else backend
    kind = device.type
    if name == "auto":
        if kind == "cpu":
            return "cpu", "CPU tensors: torch SDPA's fused CPU kernel on [B, H, L, D] views"
        if kind != "cuda":
            return "reference", f"no fused backend for {kind} tensors"
        if dtype in _SDPA_DTYPES and d <= MAX_SDPA_HEAD_DIM and d % 8 == 0:
            return "cuda", (f"{dtype} heads of dim {d}: torch SDPA's flash / memory-efficient CUDA kernels take "
                            "them")
        ok, why = _backend._runs_on("triton", device)
        if ok:
            why = _kernels().unsupported(d, dtype)
            if why is None:
                return "triton", (f"{dtype} heads of dim {d} (torch's flash / memory-efficient kernels take "
                                  f"fp16/bf16/fp32 heads of dim <= {MAX_SDPA_HEAD_DIM}, a multiple of 8): "
                                  "fastdiff's Triton flash kernel")
        return "reference", f"torch's flash kernels do not take {dtype} heads of dim {d}, Triton cannot: {why}"
    if name == "reference":
        return "reference", "asked for by name"
    if name in ("cpu", "cuda"):
        if kind != name:
            raise _backend.BackendUnavailableError(
                f"backend {name!r} was requested for op 'attention' but cannot run: it takes {name.upper()} "
                f"tensors, got {device}")
        return name, f"asked for by name: torch SDPA's {name.upper()} kernels"
    if name == "triton":
        ok, why = _backend._runs_on("triton", device)
        if ok:
            why = _kernels().unsupported(d, dtype)
        if why:
            raise _backend.BackendUnavailableError(f"backend 'triton' cannot run op 'attention' here: {why}")
        return "triton", "asked for by name: fastdiff's Triton flash kernel"
    _backend._check_name(name)  # raises ValueError naming the choices
    raise AssertionError(name)


def attention_plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, *,
                   backend: str | None = None) -> tuple[str, str]:
    """(backend, reason): the backend `attention(q, k, v, heads, backend=backend)` runs and a one-line reason."""
    d = _check(q, k, v, heads, None)
    return _plan(q.device, q.dtype, d, backend)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, *, scale: float | None = None,
              backend: str | None = None) -> torch.Tensor:
    """Multi-head attention softmax(scale·q kᵀ) v per head for q: [B, Lq, H·D], k, v: [B, Lk, H·D] (any strides;
    head h = channels [h·D, (h+1)·D)), scale 1/√D by default -> [B, Lq, H·D] contiguous; differentiable."""
    d = _check(q, k, v, heads, scale)
    if backend is None and q.is_cpu and _backend.get_backend() == "auto":
        name = "cpu"  # _plan's first rule, inlined: the call that patched models make dozens of times per forward
    else:
        name = _plan(q.device, q.dtype, d, backend)[0]
    if name == "cpu" or name == "cuda":
        if q.shape[0] and q.shape[1]:
            return sdpa(q, k, v, heads, scale)
        return reference(q, k, v, heads, scale)  # empty: SDPA's fused kernels take no empty batch or length
    if name == "triton":
        return _TritonAttention.apply(q, k, v, heads, scale)
    return reference(q, k, v, heads, scale)
