"""ADM's multi-head attention as a flash-attention kernel on guided-diffusion's qkv layout.

q, k, v are read straight out of qkv: [N, 3·H·C, T] through strided views (legacy or new head order, any strides),
the output is written as [N, H·C, T]. The kernels are the strided flash-attention kernels of
triton_kernels/attention.py (one place for the math, shared with `fastdiff.ops.attention`), given [N, H, T, C]
views of qkv, of the output and of the gradient; the logit scale is guided-diffusion's C^(-1/4) on q and on k,
s = C^(-1/2).
"""
from __future__ import annotations

import math

import torch

from . import _launch
from .attention import MAX_FP64_HEAD_DIM, _config, flash_backward, flash_forward, unsupported  # noqa: F401


def _split(qkv, num_heads, legacy):
    """(q, k, v) as [N, H, T, C] views of qkv (no copy)."""
    from fastdiff.ops.qkv_attention import split_heads
    return tuple(x.transpose(-1, -2) for x in split_heads(qkv, num_heads, legacy))


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[N, H·C, T] -> its [N, H, T, C] view."""
    return x.unflatten(1, (num_heads, x.shape[1] // num_heads)).transpose(-1, -2)


@_launch.on_tensor_device
def attention_forward(qkv: torch.Tensor, num_heads: int, legacy: bool):
    """(out [N, H·C, T], lse [N·H, T] in log2 units, fp32 (fp64 for fp64 qkv)) for qkv [N, 3·H·C, T];
    as qkv_attention.reference."""
    n, width, t = qkv.shape
    d = width // (3 * num_heads)
    why = unsupported(d, qkv.dtype)
    if why:
        raise ValueError(why)
    out = torch.empty((n, num_heads * d, t), dtype=qkv.dtype, device=qkv.device)
    lse = flash_forward(*_split(qkv, num_heads, legacy), _heads(out, num_heads), 1 / math.sqrt(d))
    return out, lse


@_launch.on_tensor_device
def attention_backward(qkv, out, lse, grad, num_heads: int, legacy: bool):
    """∂loss/∂qkv [N, 3·H·C, T] (contiguous) from the output gradient (any strides), recomputing P from the
    log-sum-exp."""
    n, width, t = qkv.shape
    d = width // (3 * num_heads)
    dqkv = torch.empty((n, width, t), dtype=qkv.dtype, device=qkv.device)
    if dqkv.numel() == 0:
        return dqkv.zero_()
    flash_backward(*_split(qkv, num_heads, legacy), _heads(out, num_heads), _heads(grad, num_heads), lse,
                   *_split(dqkv, num_heads, legacy), 1 / math.sqrt(d))
    return dqkv


def qkv_attention(qkv, num_heads, legacy=True):
    """The forward output alone, with the positional arguments of fastdiff.ops.qkv_attention.reference."""
    return attention_forward(qkv, num_heads, legacy)[0]
