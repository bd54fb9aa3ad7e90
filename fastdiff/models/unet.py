"""ADM UNet and half-UNet encoder ("Diffusion Models Beat GANs", Dhariwal & Nichol 2021).

Constructor arguments, module attribute names and hence state-dict keys and shapes are those of
openai/guided-diffusion's `unet.py`, so its checkpoints (diffusion UNets and noisy classifiers)
load with `load_state_dict(strict=True)`. GroupNorm(+SiLU) and the AdaGN scale-shift norm go
through `fastdiff.models.nn.adagn`; attention goes through `fastdiff.models.nn.qkv_attention`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastdiff.models.nn import (
    NUM_GROUPS,
    adagn,
    avg_pool_nd,
    check_labels,
    checkpoint,
    conv_nd,
    convert_module_to_f16,
    convert_module_to_f32,
    linear,
    normalization,
    qkv_attention,
    timestep_embedding,
    zero_module,
)

POOLS = ("adaptive", "attention", "spatial", "spatial_v2")


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding emb: [N, E] as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} must override forward(x, emb)")


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """nn.Sequential that hands emb to the children that are TimestepBlocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then an optional 3x3 conv.

    x: [N, C, *spatial] -> [N, C_out, *2·spatial] (for dims=3 only the inner two dims are doubled).
    """

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=1)
        elif self.out_channels != channels:
            raise ValueError(
                f"Upsample without a conv cannot change channels ({channels} -> {self.out_channels})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(
                f"Upsample: expected {self.channels} channels, got input of shape {tuple(x.shape)}")
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """2x downsampling by a strided 3x3 conv (use_conv) or average pooling.

    x: [N, C, *spatial] -> [N, C_out, *spatial/2] (for dims=3 only the inner two dims are halved).
    """

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError(
                    f"Downsample without a conv cannot change channels ({channels} -> {self.out_channels})")
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(
                f"Downsample: expected {self.channels} channels, got input of shape {tuple(x.shape)}")
        return self.op(x)


class ResBlock(TimestepBlock):
    """ADM residual block with timestep conditioning, optionally BigGAN-style up/downsampling.

    h = conv(act(GN(x)))  [resampled between the act and the conv when up/down]
    h = conv(dropout(act(GN(h) · (1 + y_s) + y_b)))   with (y_s, y_b) = Linear(SiLU(emb))  (AdaGN)
      or conv(dropout(act(GN(h + Linear(SiLU(emb))))))  without scale-shift norm
    out = skip(x) + h.    x: [N, C, *spatial], emb: [N, E] -> [N, C_out, *spatial'].
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_conv: bool = False, use_scale_shift_norm: bool = False, dims: int = 2,
                 use_checkpoint: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm
        if up and down:
            raise ValueError("ResBlock: up and down cannot both be set")

        # Indices matter: the state dict has in_layers.{0,2}, emb_layers.1, out_layers.{0,3}.
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), conv_nd(dims, channels, self.out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd = Upsample(channels, False, dims)
            self.x_upd = Upsample(channels, False, dims)
        elif down:
            self.h_upd = Downsample(channels, False, dims)
            self.x_upd = Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)))
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x, emb), self.use_checkpoint)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = adagn(x, self.in_layers[0])
        if self.updown:
            h = self.h_upd(h)
            x = self.x_upd(x)
        h = self.in_layers[2](h)
        emb_out = self.emb_layers(emb).to(h.dtype)  # [N, C_out] or [N, 2·C_out]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = adagn(h, self.out_layers[0], scale, shift)
        else:
            h = h + emb_out.reshape(*emb_out.shape, *([1] * (h.dim() - 2)))
            h = adagn(h, self.out_layers[0])
        h = self.out_layers[3](self.out_layers[2](h))
        return self.skip_connection(x) + h


class QKVAttentionLegacy(nn.Module):
    """Attention on qkv [N, H·3·C, T] with heads split before q/k/v -> [N, H·C, T]."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        return qkv_attention(qkv, self.n_heads, legacy=True)


class QKVAttention(nn.Module):
    """Attention on qkv [N, 3·H·C, T] with q/k/v split before heads -> [N, H·C, T]."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        return qkv_attention(qkv, self.n_heads, legacy=False)


def _attention_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Heads for `channels`: channels // num_head_channels when that is set (!= -1), else num_heads."""
    if num_head_channels == -1:
        if num_heads < 1 or channels % num_heads != 0:
            raise ValueError(f"attention: channels {channels} are not divisible by num_heads {num_heads}")
        return num_heads
    if num_head_channels < 1 or channels % num_head_channels != 0:
        raise ValueError(
            f"attention: channels {channels} are not divisible by num_head_channels {num_head_channels}")
    return channels // num_head_channels


class AttentionBlock(nn.Module):
    """Residual self-attention over all spatial positions: x + proj_out(attn(qkv(GN(x)))).

    x: [N, C, *spatial] -> same shape; T = prod(spatial) positions. Recomputed in backward only when
    use_checkpoint is set (guided-diffusion checkpoints attention always; the outputs are the same).
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_checkpoint: bool = False, use_new_attention_order: bool = False):
        super().__init__()
        self.channels = channels
        self.num_heads = _attention_heads(channels, num_heads, num_head_channels)
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        # New order splits q/k/v before heads; legacy splits heads first (the order of the checkpoints).
        attention_cls = QKVAttention if use_new_attention_order else QKVAttentionLegacy
        self.attention = attention_cls(self.num_heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x,), self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(adagn(x, self.norm, silu=False))))
        return (x + h).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token attends over all positions (new head order).

    x: [N, C, H, W] with H = W = spacial_dim -> [N, output_dim].
    """

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads_channels: int,
                 output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(embed_dim, spacial_dim ** 2 + 1) / embed_dim ** 0.5)
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        self.num_heads = _attention_heads(embed_dim, 1, num_heads_channels)
        self.attention = QKVAttention(self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)
        if x.shape[-1] + 1 != self.positional_embedding.shape[1]:
            raise ValueError(f"AttentionPool2d: input has {x.shape[-1]} positions, the positional embedding "
                             f"was built for {self.positional_embedding.shape[1] - 1} (check image_size)")
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)  # [N, C, T+1]
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(self.attention(self.qkv_proj(x)))
        return x[:, :, 0]


def _check_config(model_channels: int, channel_mult: Sequence[float], attention_resolutions: Iterable[int],
                  dims: int, num_res_blocks: int) -> tuple:
    """Validate the shared UNet/encoder arguments; returns attention_resolutions as a tuple of ints."""
    if dims not in (1, 2, 3):
        raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
    if len(channel_mult) == 0:
        raise ValueError("channel_mult must have at least one level")
    if num_res_blocks < 0:
        raise ValueError(f"num_res_blocks must be >= 0, got {num_res_blocks}")
    for i, mult in enumerate(channel_mult):
        ch = int(mult * model_channels)
        if ch <= 0 or ch % NUM_GROUPS != 0:
            raise ValueError(f"model_channels * channel_mult[{i}] = {model_channels} * {mult} = {ch} is "
                             f"not a positive multiple of the {NUM_GROUPS} GroupNorm groups")
    if isinstance(attention_resolutions, str):
        raise ValueError(  # noqa: TRY004 - a wrong value for the argument, as guided-diffusion users pass it
            f"attention_resolutions must be downsample rates (ints such as (2, 4, 8)), got the "
            f"string {attention_resolutions!r}; use parse_attention_resolutions(s, image_size)")
    rates = tuple(attention_resolutions)
    reachable = [2 ** i for i in range(len(channel_mult))]
    for r in rates:
        if isinstance(r, bool) or not isinstance(r, int) or r not in reachable:
            raise ValueError(f"attention_resolutions holds downsample rates; {r!r} is not one of the rates "
                             f"{reachable} that channel_mult={tuple(channel_mult)} reaches")
    return rates


def parse_attention_resolutions(resolutions: str, image_size: int) -> tuple:
    """'32,16,8' (feature-map sizes, as guided-diffusion's scripts take them) -> rates (2, 4, 8)."""
    rates = []
    for part in resolutions.split(","):
        res = int(part)
        if res <= 0 or image_size % res != 0:
            raise ValueError(f"attention resolution {res} does not divide image_size {image_size}")
        rates.append(image_size // res)
    return tuple(rates)


class _UNetTorso(nn.Module):
    """time_embed, input_blocks and middle_block shared by UNetModel and EncoderUNetModel."""

    def _store_config(self, image_size, in_channels, model_channels, out_channels, num_res_blocks, rates,
                      dropout, channel_mult, conv_resample, use_checkpoint, use_fp16, num_heads, num_head_channels,
                      num_heads_upsample):
        """Keep the constructor arguments as attributes, as guided-diffusion's models do (rates: downsample rates)."""
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = rates
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.use_checkpoint = use_checkpoint
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample

    def _build_torso(self, in_channels, model_channels, num_res_blocks, dropout, channel_mult, conv_resample,
                     dims, use_checkpoint, num_heads, num_head_channels, use_scale_shift_norm,
                     resblock_updown, use_new_attention_order, num_classes=None):
        attention_rates = self.attention_resolutions
        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            linear(model_channels, time_embed_dim), nn.SiLU(), linear(time_embed_dim, time_embed_dim))
        if num_classes is not None:
            # Registered here, between time_embed and input_blocks, as in guided-diffusion: the state dict
            # and parameters() then come in its order (its EMA and optimiser checkpoints are by position).
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        def resblock(ch, out_ch, **kw):
            return ResBlock(ch, time_embed_dim, dropout, out_channels=out_ch, dims=dims,
                            use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm, **kw)

        def attention(ch, heads):
            return AttentionBlock(ch, use_checkpoint=use_checkpoint, num_heads=heads,
                                  num_head_channels=num_head_channels,
                                  use_new_attention_order=use_new_attention_order)

        self._resblock, self._attention = resblock, attention
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(conv_nd(dims, in_channels, ch, 3, padding=1))])
        self._feature_size = ch
        input_block_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [resblock(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_rates:
                    layers.append(attention(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self._feature_size += ch
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = (resblock(ch, ch, down=True) if resblock_updown
                        else Downsample(ch, conv_resample, dims=dims, out_channels=ch))
                self.input_blocks.append(TimestepEmbedSequential(down))
                input_block_chans.append(ch)
                ds *= 2
                self._feature_size += ch
        self.middle_block = TimestepEmbedSequential(
            resblock(ch, None), attention(ch, num_heads), resblock(ch, None))
        self._feature_size += ch
        return ch, ds, input_block_chans

    def _input_dtype_check(self, x: torch.Tensor) -> None:
        conv = self.input_blocks[0][0]
        if conv.weight.dtype != self.dtype:
            raise ValueError(f"the model's torso computes in {self.dtype} but its convolutions hold "
                             f"{conv.weight.dtype}: switch precision with model.convert_to_fp16() / "
                             f"convert_to_fp32() (after loading a checkpoint), not with .half() or "
                             f".to(dtype)")

    def _check_inputs(self, x: torch.Tensor, timesteps: torch.Tensor) -> None:
        """Clear errors, before any work, for inputs the torso cannot take: x: [N, in_channels, *spatial] in the
        dtype of the weights, every downsampled size divisible by 2^(levels − 1); timesteps: a tensor."""
        dims = self.input_blocks[0][0].weight.dim() - 2
        if not isinstance(x, torch.Tensor) or x.dim() != dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [N, in_channels={self.in_channels}, <{dims} spatial dims>], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        weights = self.time_embed[0].weight.dtype
        if x.dtype != weights:
            raise TypeError(f"x has dtype {x.dtype} but the model's weights are {weights}: cast x (x.to({weights})) "
                            f"or the model")
        factor = 2 ** (len(self.channel_mult) - 1)
        halved = x.shape[2:] if dims < 3 else x.shape[3:]  # 3-D models halve only the inner two dims
        if any(s % factor for s in halved):
            raise ValueError(f"x's spatial size {tuple(x.shape[2:])} must be divisible by 2^(levels - 1) = {factor} "
                             f"(channel_mult has {len(self.channel_mult)} levels)")
        if not isinstance(timesteps, torch.Tensor):
            raise TypeError(f"timesteps must be a tensor ([N] or a scalar), got {type(timesteps).__name__}")
        self._input_dtype_check(x)

    def _embedding(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Checked inputs -> the time (+ label) embedding [N, 4·model_channels]. y: int64 [N] class labels in
        [0, num_classes) when the model is class-conditional, else None (`check_labels`)."""
        num_classes = self.num_classes
        if (y is not None) != (num_classes is not None):
            raise ValueError(f"pass class labels y if and only if the {type(self).__name__} is class-conditional "
                             f"(num_classes={num_classes})")
        self._check_inputs(x, timesteps)
        emb = self._time_emb(timesteps, x.shape[0])
        if y is None:
            return emb
        return emb + self.label_emb(check_labels(y, x.shape[0], num_classes, type(self).__name__))

    def _time_emb(self, timesteps: torch.Tensor, n: int) -> torch.Tensor:
        """timesteps: [N] or a scalar -> emb: [N, 4·model_channels] (fp32)."""
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(n)
        if timesteps.shape != (n,):
            raise ValueError(f"timesteps must have shape [{n}], got {tuple(timesteps.shape)}")
        return self.time_embed(timestep_embedding(timesteps, self.model_channels))


class UNetModel(_UNetTorso):
    """ADM UNet ε_θ(x_t, t[, y]) with guided-diffusion's arguments and state-dict layout.

    x: [N, in_channels, *spatial], timesteps: [N], y: [N] class labels (when num_classes is set)
    -> [N, out_channels, *spatial]; out_channels = 2·in_channels for a learned Σ_θ (learn_sigma).
    attention_resolutions are downsample rates (attention at 32/16/8 of a 64² image is (2, 4, 8)).
    use_fp16 makes the torso compute in fp16 once `convert_to_fp16()` has cast its convolutions, as in
    guided-diffusion (call it after loading a checkpoint).
    """

    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks,
                 attention_resolutions, dropout=0, channel_mult=(1, 2, 4, 8), conv_resample=True, dims=2,
                 num_classes=None, use_checkpoint=False, use_fp16=False, num_heads=1, num_head_channels=-1,
                 num_heads_upsample=-1, use_scale_shift_norm=False, resblock_updown=False,
                 use_new_attention_order=False):
        super().__init__()
        rates = _check_config(model_channels, channel_mult, attention_resolutions, dims, num_res_blocks)
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self._store_config(image_size, in_channels, model_channels, out_channels, num_res_blocks, rates, dropout,
                           channel_mult, conv_resample, use_checkpoint, use_fp16, num_heads, num_head_channels,
                           num_heads_upsample)
        self.num_classes = num_classes

        ch, ds, input_block_chans = self._build_torso(
            in_channels, model_channels, num_res_blocks, dropout, channel_mult, conv_resample, dims,
            use_checkpoint, num_heads, num_head_channels, use_scale_shift_norm, resblock_updown,
            use_new_attention_order, num_classes=num_classes)

        resblock, attention = self._resblock, self._attention
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = input_block_chans.pop()
                layers = [resblock(ch + ich, int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in rates:
                    layers.append(attention(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(resblock(ch, ch, up=True) if resblock_updown
                                  else Upsample(ch, conv_resample, dims=dims, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
                self._feature_size += ch
        del self._resblock, self._attention
        input_ch = int(channel_mult[0] * model_channels)
        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(conv_nd(dims, input_ch, out_channels, 3, padding=1)))

    def convert_to_fp16(self) -> None:
        """Cast the torso's convolutions to fp16 and compute the torso in fp16 (norms stay fp32)."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            part.apply(convert_module_to_f16)
        self.dtype = torch.float16

    def convert_to_fp32(self) -> None:
        """Undo `convert_to_fp16`: convolutions and computation back in fp32."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            part.apply(convert_module_to_f32)
        self.dtype = torch.float32

    convert_to_float32 = convert_to_fp32

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor,
                y: torch.Tensor | None = None, extra_emb: torch.Tensor | None = None) -> torch.Tensor:
        """x: [N, C_in, *spatial], timesteps: [N], y: [N] -> [N, C_out, *spatial] in x's dtype.

        extra_emb: optional [N, 4·model_channels], added to the time (and label) embedding, so it reaches every
        ResBlock's AdaGN scale/shift: the hook through which `fastdiff.models.siddm_unet.UNetGenerator` feeds its
        latent z (DDGAN's style modulation). It has no parameters here, so the state dict is unchanged.
        """
        emb = self._embedding(x, timesteps, y)
        if extra_emb is not None:
            if extra_emb.shape != emb.shape:
                raise ValueError(f"extra_emb must have shape [N, 4·model_channels] = {tuple(emb.shape)}, got "
                                 f"{tuple(extra_emb.shape)}")
            emb = emb + extra_emb.to(emb.dtype)
        hs = []
        h = x.to(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        h = adagn(h.to(x.dtype), self.out[0])
        return self.out[2](h)


class EncoderUNetModel(_UNetTorso):
    """ADM half-UNet (noisy classifier / discriminator): input blocks, middle block, then a pooled head.

    x: [N, in_channels, H, W], timesteps: [N] -> logits [N, out_channels]; `forward_features` returns the
    middle-block output [N, feature_channels, H / feature_downsample, W / feature_downsample] that the head pools.
    pool: "adaptive" (GN, SiLU, global average, 1x1 conv), "attention" (GN, SiLU, AttentionPool2d; needs
    num_head_channels), "spatial" / "spatial_v2" (MLP on the spatial means of every block's output).
    """

    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks,
                 attention_resolutions, dropout=0, channel_mult=(1, 2, 4, 8), conv_resample=True, dims=2,
                 use_checkpoint=False, use_fp16=False, num_heads=1, num_head_channels=-1,
                 num_heads_upsample=-1,
                 use_scale_shift_norm=False, resblock_updown=False, use_new_attention_order=False,
                 pool="adaptive"):
        super().__init__()
        rates = _check_config(model_channels, channel_mult, attention_resolutions, dims, num_res_blocks)
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if dims != 2:
            raise ValueError(f"EncoderUNetModel's pooled heads are 2-D; dims must be 2, got {dims}")
        if pool == "attention" and num_head_channels == -1:
            raise ValueError("pool='attention' needs num_head_channels (e.g. 64)")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self._store_config(image_size, in_channels, model_channels, out_channels, num_res_blocks, rates, dropout,
                           channel_mult, conv_resample, use_checkpoint, use_fp16, num_heads, num_head_channels,
                           num_heads_upsample)

        ch, ds, _ = self._build_torso(
            in_channels, model_channels, num_res_blocks, dropout, channel_mult, conv_resample, dims,
            use_checkpoint, num_heads, num_head_channels, use_scale_shift_norm, resblock_updown,
            use_new_attention_order)
        del self._resblock, self._attention
        self.pool = pool
        # The shape of forward_features' output per example: [feature_channels, H / ds, W / ds].
        self.feature_channels, self.feature_downsample = ch, ds
        if pool == "adaptive":
            self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                     zero_module(conv_nd(dims, ch, out_channels, 1)), nn.Flatten())
        elif pool == "attention":
            if image_size // ds < 1:
                raise ValueError(f"image_size {image_size} is smaller than the total downsampling {ds}")
            self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                     AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels))
        elif pool == "spatial":
            self.out = nn.Sequential(nn.Linear(self._feature_size, 2048), nn.ReLU(),
                                     nn.Linear(2048, self.out_channels))
        else:  # spatial_v2
            self.out = nn.Sequential(nn.Linear(self._feature_size, 2048), normalization(2048), nn.SiLU(),
                                     nn.Linear(2048, self.out_channels))

    def convert_to_fp16(self) -> None:
        """Cast the torso's convolutions to fp16 and compute the torso in fp16 (the head stays fp32)."""
        for part in (self.input_blocks, self.middle_block):
            part.apply(convert_module_to_f16)
        self.dtype = torch.float16

    def convert_to_fp32(self) -> None:
        """Undo `convert_to_fp16`."""
        for part in (self.input_blocks, self.middle_block):
            part.apply(convert_module_to_f32)
        self.dtype = torch.float32

    convert_to_float32 = convert_to_fp32

    def _torso(self, x: torch.Tensor, timesteps: torch.Tensor, spatial_means: bool):
        """(middle-block output [N, C', H', W'] in x's dtype, the spatial means [N, C_b] of every block's output
        in order when `spatial_means`, else [])."""
        self._check_inputs(x, timesteps)
        emb = self._time_emb(timesteps, x.shape[0])
        results = []
        h = x.to(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            if spatial_means:
                results.append(h.to(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb).to(x.dtype)
        if spatial_means:
            results.append(h.mean(dim=(2, 3)))
        return h, results

    def forward_features(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """z_t = the middle-block output that `forward` pools: x: [N, C_in, H, W], timesteps: [N] ->
        [N, feature_channels, H / 2^(levels-1), W / 2^(levels-1)] in x's dtype (Discriminator Guidance's latent
        z_t of a noisy classifier, Kim et al. 2023)."""
        return self._torso(x, timesteps, spatial_means=False)[0]

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x: [N, C_in, H, W], timesteps: [N] -> [N, out_channels] in x's dtype."""
        spatial = self.pool.startswith("spatial")
        h, results = self._torso(x, timesteps, spatial_means=spatial)
        if spatial:
            h = torch.cat(results, dim=-1)  # [N, feature_size]
            if self.pool == "spatial":
                return self.out(h)
            return self.out[3](adagn(self.out[0](h), self.out[1]))
        h = adagn(h, self.out[0])
        if self.pool == "adaptive":
            return self.out[4](self.out[3](self.out[2](h)))
        return self.out[2](h)
