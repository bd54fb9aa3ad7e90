"""ADM's multi-head self-attention on its own layout (Dhariwal & Nichol 2021; guided-diffusion's
QKVAttentionLegacy / QKVAttention); differentiable.

qkv: [N, 3·H·C, T] from the attention block's 1x1 convolution; the output is [N, H·C, T].

- legacy order (``legacy=True``, QKVAttentionLegacy): heads are split first, qkv viewed as [N, H, 3, C, T];
- new order (``legacy=False``, QKVAttention, ``use_new_attention_order``): q, k, v are split first, qkv viewed
  as [N, 3, H, C, T].

Per head, with q, k, v: [C, T] and s = C^(-1/4) applied to q and to k (more stable in fp16 than dividing the
logits afterwards):  W = softmax_s((s·q)ᵀ(s·k)) in fp32, then cast to the storage dtype;  a = v Wᵀ.
"""
from __future__ import annotations

import importlib
import math

import torch
import torch.nn.functional as F

from fastdiff.ops import backend as _backend
from fastdiff.ops import common as C

SUPPORTED = ("reference", "cpu", "triton")


def split_heads(qkv: torch.Tensor, num_heads: int, legacy: bool):
    """(q, k, v), each an [N, H, C, T] view of qkv: [N, 3·H·C, T] in the legacy or the new order (no copy)."""
    n, width, t = qkv.shape
    ch = width // (3 * num_heads)
    if legacy:
        x = qkv.unflatten(1, (num_heads, 3, ch))
        return x[:, :, 0], x[:, :, 1], x[:, :, 2]
    x = qkv.unflatten(1, (3, num_heads, ch))
    return x[:, 0], x[:, 1], x[:, 2]


def reference(qkv: torch.Tensor, num_heads: int, legacy: bool = True) -> torch.Tensor:
    """guided-diffusion's einsum attention: q, k scaled by C^(-1/4) each, softmax in fp32 (fp64 for fp64),
    weights cast back to the storage dtype before the product with v."""
    n, width, length = qkv.shape
    ch = width // (3 * num_heads)
    q, k, v = (x.reshape(n * num_heads, ch, length) for x in split_heads(qkv, num_heads, legacy))
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.to(C.acc_dtype(qkv.dtype)), dim=-1).to(weight.dtype)
    a = torch.einsum("bts,bcs->bct", weight, v)
    return a.reshape(n, num_heads * ch, length)


def cpu(qkv: torch.Tensor, num_heads: int, legacy: bool = True) -> torch.Tensor:
    """The same attention through torch's scaled_dot_product_attention on [N, H, T, C] views (autograd-capable)."""
    n, width, length = qkv.shape
    ch = width // (3 * num_heads)
    # Contiguous [N, H, T, C] copies: on strided views SDPA leaves its fused CPU kernel (~30x slower at T = 256).
    q, k, v = (x.transpose(-1, -2).contiguous() for x in split_heads(qkv, num_heads, legacy))
    out = F.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(ch))  # [N, H, T, C]
    return out.transpose(-1, -2).reshape(n, num_heads * ch, length)


class _TritonQKVAttention(torch.autograd.Function):
    """Flash-attention forward (saves the row log-sum-exp) and backward (recomputes P from it)."""

    @staticmethod
    def forward(ctx, qkv, num_heads, legacy):
        kernels = importlib.import_module("fastdiff.triton_kernels.qkv_attention")
        out, lse = kernels.attention_forward(qkv, num_heads, legacy)
        ctx.save_for_backward(qkv, out, lse)
        ctx.num_heads, ctx.legacy = num_heads, legacy
        return out

    @staticmethod
    def backward(ctx, grad):
        kernels = importlib.import_module("fastdiff.triton_kernels.qkv_attention")
        qkv, out, lse = ctx.saved_tensors
        return kernels.attention_backward(qkv, out, lse, grad, ctx.num_heads, ctx.legacy), None, None


def check_args(qkv, num_heads, legacy) -> int:
    """Validate the arguments; returns the head dimension C."""
    C.check_float("qkv", qkv)
    if qkv.dim() != 3:
        raise ValueError(f"qkv must be [N, 3*H*C, T] (3 dims), got shape {tuple(qkv.shape)}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if not isinstance(legacy, bool):
        raise TypeError(f"legacy must be a bool, got {type(legacy).__name__}")
    width = qkv.shape[1]
    if width == 0 or width % (3 * num_heads):
        raise ValueError(f"qkv width (dim 1) must be a positive multiple of 3*num_heads = {3 * num_heads}, "
                         f"got {width} (qkv shape {tuple(qkv.shape)})")
    return width // (3 * num_heads)


def qkv_attention(qkv: torch.Tensor, num_heads: int, legacy: bool = True, backend: str | None = None):
    """Multi-head attention of ADM on qkv: [N, 3·H·C, T] -> [N, H·C, T] (legacy or new head order)."""
    d = check_args(qkv, num_heads, legacy)
    name = _backend.resolve("qkv_attention", qkv.device, supported=SUPPORTED, backend=backend)
    if qkv.numel() == 0:
        return reference(qkv, num_heads, legacy)
    if name == "triton":
        why = importlib.import_module("fastdiff.triton_kernels.qkv_attention").unsupported(d, qkv.dtype)
        if why is None:
            return _TritonQKVAttention.apply(qkv, num_heads, legacy)
        if (backend or _backend.get_backend()) == "triton":  # asked for by name: never a silent fallback
            raise _backend.BackendUnavailableError(f"backend 'triton' cannot run op 'qkv_attention' here: {why}")
    if name == "cpu":
        return cpu(qkv, num_heads, legacy)
    return reference(qkv, num_heads, legacy)
