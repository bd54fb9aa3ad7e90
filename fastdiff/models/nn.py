"""Building blocks of the ADM UNet ("Diffusion Models Beat GANs", Dhariwal & Nichol 2021).

The two hot spots of the network each go through one function here, so a later change can switch
them to fused kernels in one place:

- `adagn`: GroupNorm (statistics in fp32) + optional AdaGN scale/shift (ADM §3) + optional SiLU;
- `qkv_attention`: multi-head self-attention on ADM's packed `[N, 3·H·C, T]` qkv layout.

Both call fastdiff's fused ops through the backend registry (plain PyTorch with the `reference` backend).
Module layouts (and hence state-dict keys) follow guided-diffusion.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _torch_checkpoint

from fastdiff import ops

#: ADM normalises every feature map with GroupNorm over 32 groups.
NUM_GROUPS = 32


def check_labels(y, n: int, num_classes: int, owner: str) -> torch.Tensor:
    """y when it is an integer tensor [n] of class labels in [0, num_classes), else a ValueError naming `owner`'s
    y. The range is read where that costs no device synchronisation (CPU tensors; on a GPU an out-of-range
    embedding lookup asserts on the device)."""
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{owner}: y must be an int64 tensor of class labels, got "
                        f"{getattr(y, 'dtype', type(y).__name__)}")
    if y.shape != (n,):
        raise ValueError(f"{owner}: y must have shape [N] = [{n}], got {tuple(y.shape)}")
    if y.device.type == "cpu" and y.numel() and not torch.compiler.is_compiling():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{owner}: y must lie in [0, num_classes={num_classes}), got values in [{lo}, {hi}] "
                             f"(a classifier-free null label needs a model trained with label dropout, whose "
                             f"num_classes counts it)")
    return y


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 and cast back to the input dtype (guided-diffusion's GroupNorm32).

    x: [N, C, *spatial] (or [N, C]) -> same shape and dtype.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        if num_channels % num_groups != 0:
            raise ValueError(
                f"GroupNorm32: num_channels={num_channels} is not divisible by num_groups={num_groups}; "
                f"ADM needs every channel count (model_channels * channel_mult[i], and 2048 for the "
                f"spatial_v2 head) to be a multiple of {num_groups}")
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adagn(x, self, silu=False)


def normalization(channels: int) -> GroupNorm32:
    """ADM's normalisation layer: GroupNorm32 with 32 groups over `channels`."""
    return GroupNorm32(NUM_GROUPS, channels)


def _broadcast_per_channel(v: torch.Tensor, h: torch.Tensor, name: str) -> torch.Tensor:
    """v: [N, C] or already broadcastable [N, C, 1, ...] -> [N, C, 1, ...] matching h: [N, C, *spatial]."""
    if v.dim() == 2:
        if v.shape != h.shape[:2]:
            raise ValueError(
                f"adagn: {name} has shape {tuple(v.shape)}, expected [N, C] = {tuple(h.shape[:2])}")
        return v.reshape(*v.shape, *([1] * (h.dim() - 2)))
    if v.dim() != h.dim() or v.shape[:2] != h.shape[:2] or any(s != 1 for s in v.shape[2:]):
        raise ValueError(f"adagn: {name} has shape {tuple(v.shape)}, expected [N, C] or [N, C, 1, ...] "
                         f"for h of shape {tuple(h.shape)}")
    return v


def adagn(h: torch.Tensor, norm: nn.GroupNorm, scale: torch.Tensor | None = None,
          shift: torch.Tensor | None = None, silu: bool = True) -> torch.Tensor:
    """AdaGN (ADM §3): act(GroupNorm(h; γ, β) · (1 + y_s) + y_b) through the fused `fastdiff.ops.adagn`.

    h: [N, C, *spatial] (or [N, C]); norm: the GroupNorm holding γ, β: [C], its group count and eps;
    scale (y_s), shift (y_b): [N, C] or [N, C, 1, ...], optional; silu: apply SiLU (else identity).
    Returns [N, C, *spatial] in h's dtype. Statistics and the whole affine run in fp32 (fp64 for fp64) and are
    rounded once at the end; in fp32 this is guided-diffusion's GroupNorm32 exactly, in fp16 it skips its
    intermediate rounding of the normalised value. γ, β (kept fp32 by convert_to_fp16) are cast to h's dtype.
    """
    if h.dim() < 2 or h.shape[1] != norm.num_channels:
        raise ValueError(f"adagn: h has shape {tuple(h.shape)}, expected [N, {norm.num_channels}, ...]")
    if norm.weight is None or norm.bias is None:
        raise ValueError("adagn: the GroupNorm must be affine (ADM's normalization() layers are)")
    per_channel = lambda v, name: None if v is None else _broadcast_per_channel(v, h, name).reshape(h.shape[:2])  # noqa: E731
    return ops.adagn(h, norm.weight.to(h.dtype), norm.bias.to(h.dtype), norm.num_groups, norm.eps,
                     scale=per_channel(scale, "scale"), shift=per_channel(shift, "shift"),
                     act="silu" if silu else "none")


def qkv_attention(qkv: torch.Tensor, n_heads: int, legacy: bool) -> torch.Tensor:
    """ADM multi-head self-attention, softmax(q·kᵀ / √C) v per head, on the packed qkv layout, through the fused
    `fastdiff.ops.qkv_attention` (guided-diffusion's scaling: q and k each by 1/√√C; softmax in fp32).

    qkv: [N, 3·H·C, T]. legacy=True: heads are split before q/k/v (QKVAttentionLegacy); legacy=False: q/k/v
    split first (QKVAttention). Returns [N, H·C, T] ordered (head, c).
    """
    return ops.qkv_attention(qkv, n_heads, legacy=legacy)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding (Transformer positional encoding as used by DDPM/ADM).

    timesteps: [N] (may be fractional) -> [N, dim] fp32: [cos(t·f_i), sin(t·f_i)] with
    f_i = max_period^(-i/half), i < half = dim // 2, zero-padded by one column when dim is odd.
    """
    if timesteps.dim() != 1:
        raise ValueError(f"timestep_embedding: timesteps must be 1-D [N], got shape {tuple(timesteps.shape)}")
    half = dim // 2
    # Built on the timesteps' device: no host-to-device copy inside a sampling step.
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-D, 2-D or 3-D convolution (nn.Conv1d/2d/3d)."""
    convs = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
    if dims not in convs:
        raise ValueError(f"conv_nd: dims must be 1, 2 or 3, got {dims}")
    return convs[dims](*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-D, 2-D or 3-D average pooling layer."""
    pools = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
    if dims not in pools:
        raise ValueError(f"avg_pool_nd: dims must be 1, 2 or 3, got {dims}")
    return pools[dims](*args, **kwargs)


def linear(*args, **kwargs) -> nn.Linear:
    """A linear layer."""
    return nn.Linear(*args, **kwargs)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (ADM initialises every residual branch's last layer to zero)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def checkpoint(func: Callable, inputs: Sequence[torch.Tensor], flag: bool):
    """func(*inputs), recomputing activations in backward when `flag` (torch.utils.checkpoint).

    Non-reentrant checkpointing: parameters get gradients without being passed explicitly, and the
    RNG state is restored so dropout masks are the same in the recomputation.
    """
    if flag and torch.is_grad_enabled():
        return _torch_checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def convert_module_to_f16(module: nn.Module) -> None:
    """Cast a convolution's weight and bias to fp16 in place (other modules stay fp32)."""
    if isinstance(module, _CONVS):
        module.weight.data = module.weight.data.half()
        if module.bias is not None:
            module.bias.data = module.bias.data.half()


def convert_module_to_f32(module: nn.Module) -> None:
    """Cast a convolution's weight and bias back to fp32, undoing `convert_module_to_f16`."""
    if isinstance(module, _CONVS):
        module.weight.data = module.weight.data.float()
        if module.bias is not None:
            module.bias.data = module.bias.data.float()
