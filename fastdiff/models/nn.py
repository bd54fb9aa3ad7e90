"""Building blocks of the ADM UNet ("Diffusion Models Beat GANs", Dhariwal & Nichol 2021).

The two hot spots of the network each go through one function here, so a later change can switch
them to fused kernels in one place:

- `adagn`: GroupNorm (statistics in fp32) + optional AdaGN scale/shift (ADM §3) + optional SiLU;
- `qkv_attention`: multi-head self-attention on ADM's packed `[N, 3·H·C, T]` qkv layout.

Both are plain PyTorch for now. Module layouts (and hence state-dict keys) follow guided-diffusion.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _torch_checkpoint

#: ADM normalises every feature map with GroupNorm over 32 groups.
NUM_GROUPS = 32


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
    """AdaGN (ADM §3): act(GroupNorm(h; γ, β) · (1 + y_s) + y_b), GroupNorm statistics in fp32.

    h: [N, C, *spatial] (or [N, C]); norm: the GroupNorm holding γ, β: [C], its group count and eps;
    scale (y_s), shift (y_b): [N, C] or [N, C, 1, ...], optional; silu: apply SiLU (else identity).
    Returns [N, C, *spatial] in h's dtype. The normalised value is rounded to h's dtype before the
    scale/shift, as guided-diffusion's GroupNorm32 does, so fp16 models give its outputs.
    """
    if h.dim() < 2 or h.shape[1] != norm.num_channels:
        raise ValueError(f"adagn: h has shape {tuple(h.shape)}, expected [N, {norm.num_channels}, ...]")
    weight = norm.weight.float() if norm.weight is not None else None
    bias = norm.bias.float() if norm.bias is not None else None
    # torch.group_norm, not F.group_norm: the latter refuses one value per group (C/G = 1, H·W = 1),
    # where the normalised value is simply 0 and the output is β.
    out = torch.group_norm(h.float(), norm.num_groups, weight, bias, norm.eps,
                           torch.backends.cudnn.enabled).to(h.dtype)
    if scale is not None:
        out = out * (1 + _broadcast_per_channel(scale, h, "scale"))
    if shift is not None:
        out = out + _broadcast_per_channel(shift, h, "shift")
    if silu:
        out = F.silu(out)
    return out


def qkv_attention(qkv: torch.Tensor, n_heads: int, legacy: bool) -> torch.Tensor:
    """ADM multi-head self-attention, softmax(q·kᵀ / √C) v per head, on the packed qkv layout.

    qkv: [N, 3·H·C, T]. legacy=True: heads are split before q/k/v, i.e. channels ordered
    (head, {q,k,v}, c) (guided-diffusion's QKVAttentionLegacy); legacy=False: q/k/v split first,
    channels ordered ({q,k,v}, head, c) (its QKVAttention). Returns [N, H·C, T] ordered (head, c).
    q and k are each scaled by 1/√√C before the product (steadier in fp16 than dividing afterwards);
    the softmax runs in fp32 and is cast back to qkv's dtype.
    """
    if qkv.dim() != 3:
        raise ValueError(f"qkv_attention: qkv must be [N, 3*H*C, T], got shape {tuple(qkv.shape)}")
    if n_heads < 1:
        raise ValueError(f"qkv_attention: n_heads must be >= 1, got {n_heads}")
    n, width, length = qkv.shape
    if width % (3 * n_heads) != 0:
        raise ValueError(f"qkv_attention: qkv width {width} is not divisible by 3 * n_heads = {3 * n_heads}")
    ch = width // (3 * n_heads)
    if legacy:
        q, k, v = qkv.reshape(n * n_heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (t.reshape(n * n_heads, ch, length) for t in qkv.chunk(3, dim=1))
    scale = 1.0 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)  # [N·H, T, T]
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    out = torch.einsum("bts,bcs->bct", weight, v)  # [N·H, C, T]
    return out.reshape(n, -1, length)


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
