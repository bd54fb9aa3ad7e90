"""Image networks of SIDDM (Xu et al. 2023, "Semi-Implicit Denoising Diffusion Models") and of its DDGAN baseline
(Xiao et al. 2022, "Tackling the Generative Learning Trilemma with Denoising Diffusion GANs"), built from the ADM
blocks of `fastdiff.models.unet` (no copies of them).

The call contract of `fastdiff.training.adversarial` (the objectives and the few-step sampler):

- `UNetGenerator`:            G_θ(x_t, t, z, y=None) -> x̂_0, the x_0 of the posterior
                              p_θ(x_{t−1} | x_t) = q(x_{t−1} | x_t, x_0 = G_θ(x_t, t, z)).
- `UNetSIDDMDiscriminator`:   D(x_{t−1}, t, y=None) -> (logit of D_φ, C_ψ(x_{t−1}) ≈ x_t, x̂_0):
                              the encoder gives the logit and the AFD regression C_ψ (they share the trunk, as the
                              paper shares "most layers" between them), the decoder the denoising output of the
                              discriminator regulariser min_φ E ‖D_φ(x_{t−1}, t) − x_0‖² (SIDDM §3.3, UnetGAN-style).
- `UNetDDGANDiscriminator`:   D(x_{t−1}, t, x_t, y=None) -> logit of the joint D_φ(x_{t−1}, x_t, t) (DDGAN eq. 5);
                              x_{t−1} and x_t concatenated on channels, encoder only.

t is an int64 [N] step index in [0, T) of the few-step schedule (T ∈ {1, 2, 4, 8}); it enters exactly as ADM's
diffusion step does (sinusoidal embedding → MLP → every ResBlock's AdaGN). The networks do not know T: the range
of t is the objective's and sampler's to check (a device-side range check would synchronise the host each step).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastdiff.models.nn import adagn, check_labels, conv_nd, linear, normalization, zero_module
from fastdiff.models.unet import EncoderUNetModel, UNetModel


def _check_image(name: str, x, channels: int, levels: int) -> None:
    """x must be a float [N, channels, H, W] tensor with H, W divisible by the UNet's total downsampling."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [N, {channels}, H, W], got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape [N, {channels}, H, W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    down = 2 ** (levels - 1)
    if x.shape[2] % down or x.shape[3] % down:
        raise ValueError(f"{name}: spatial size {tuple(x.shape[2:])} must be divisible by {down} "
                         f"(2^(len(channel_mult) - 1), the UNet's total downsampling)")


def _check_2d(cls: str, kwargs: dict) -> None:
    if kwargs.get("dims", 2) != 2:
        raise ValueError(f"{cls} works on images: dims must be 2, got {kwargs['dims']}")


def _image_to_image(cls: str, kwargs: dict, why: str) -> None:
    """UNet kwargs of a 2-D network whose output is an image like its input: out_channels defaults to in_channels
    and must equal it (`why` says what the output is)."""
    _check_2d(cls, kwargs)
    in_channels = kwargs.get("in_channels")
    out_channels = kwargs.setdefault("out_channels", in_channels)
    if out_channels != in_channels:
        raise ValueError(f"{cls}: out_channels must equal in_channels = {in_channels} ({why}), got {out_channels}")


class PixelNorm(nn.Module):
    """z / sqrt(mean(z²) + 1e-8) over features (StyleGAN's mapping-network input norm, as DDGAN's).
    z: [N, nz] -> [N, nz]."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class UNetGenerator(UNetModel):
    """The ADM UNet as SIDDM's / DDGAN's denoiser G_θ(x_t, t, z[, y]) -> x̂_0 (direct x_0 prediction).

    x_t: [N, C, H, W], t: int64 [N], z: [N, nz] (DDGAN: nz = 100, z ~ N(0, I)), y: [N] labels when num_classes is
    set -> x̂_0: [N, C, H, W]. Every `UNetModel` keyword argument is accepted (out_channels defaults to, and must
    equal, in_channels: G predicts a sample, not a variance).

    How z enters: a mapping network w = MLP(PixelNorm(z)) (DDGAN's z_transform: PixelNorm, then `z_layers` Linear+SiLU
    layers, then a last Linear) of width 4·model_channels is added to the time embedding through
    `UNetModel.forward(extra_emb=...)`, so z modulates every ResBlock's AdaGN scale/shift, which is DDGAN's style
    modulation of its NCSN++ generator expressed in ADM's own conditioning path. The alternative, z broadcast as nz
    extra input channels, would reach only the first (linear) convolution and cost nz·9·model_channels weights; the
    embedding route adds no parameter to the UNet itself, so `unet_state_dict()` loads into a plain UNetModel.
    """

    def __init__(self, *, nz: int = 100, z_layers: int = 3, **unet_kwargs):
        if isinstance(nz, bool) or not isinstance(nz, int) or nz < 1:
            raise ValueError(f"UNetGenerator: nz must be a positive int (the latent size), got {nz!r}")
        if isinstance(z_layers, bool) or not isinstance(z_layers, int) or z_layers < 0:
            raise ValueError(f"UNetGenerator: z_layers must be an int >= 0, got {z_layers!r}")
        _image_to_image("UNetGenerator", unet_kwargs, "G predicts x_0")
        super().__init__(**unet_kwargs)
        self.nz, self.z_layers = nz, z_layers
        emb = 4 * self.model_channels
        layers: list[nn.Module] = [PixelNorm(), linear(nz, emb), nn.SiLU()]
        for _ in range(z_layers - 1):
            layers += [linear(emb, emb), nn.SiLU()]
        layers.append(linear(emb, emb))
        self.z_embed = nn.Sequential(*layers)

    def unet_state_dict(self) -> dict:
        """The state dict without the mapping network: guided-diffusion's UNetModel keys."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("z_embed.")}

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """x_t: [N, C, H, W], t: int64 [N], z: [N, nz], y: [N] or None -> x̂_0: [N, C, H, W] in x_t's dtype."""
        _check_image("x_t", x_t, self.in_channels, len(self.channel_mult))
        if not isinstance(z, torch.Tensor) or z.shape != (x_t.shape[0], self.nz):
            raise ValueError(f"z must be a tensor of shape [N, nz] = [{x_t.shape[0]}, {self.nz}], got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        w = self.z_embed(z.float())
        return super().forward(x_t, t, y, extra_emb=w)


class UNetSIDDMDiscriminator(UNetModel):
    """SIDDM's UNet discriminator: D(x_{t−1}, t[, y]) -> (logit [N], afd_pred [N, C, H, W], denoised [N, C, H, W]).

    The ADM UNet (any `UNetModel` keyword argument; out_channels defaults to, and must equal, in_channels) with two
    heads on its encoder (input blocks + middle block):

    - logit head: GN, SiLU, global average pool, 1×1 conv -> D_φ(x_{t−1}, t) (EncoderUNetModel's "adaptive" head);
    - AFD head C_ψ(x_{t−1}, t) -> predicted x_t (SIDDM eq. "total objective": the regression the generator's
      −‖C_ψ(x'_{t−1}) − x'_t‖² term plays against): GN, SiLU, 3×3 conv on the full-resolution encoder features
      (output of the last level-0 input block) concatenated with the nearest-upsampled middle-block features,
      so it is pixel-aligned and sees the global context, yet uses no decoder parameter;
    - the decoder (output blocks + `out`) gives `denoised` ≈ x_0, the discriminator regulariser's output.

    So logit and afd_pred do not depend on `output_blocks` / `out`; `denoised` does (and on the encoder). With
    class labels (num_classes) y enters the shared embedding, as in UNetModel. The heads' last convs start at zero
    (ADM's output-layer init): logit 0 and afd_pred 0 before training.
    """

    def __init__(self, **unet_kwargs):
        _image_to_image("UNetSIDDMDiscriminator", unet_kwargs, "the denoising output is an x_0")
        super().__init__(**unet_kwargs)
        mc, mult = self.model_channels, self.channel_mult
        ch0, ch_mid = int(mult[0] * mc), int(mult[-1] * mc)
        self.feature_downsample = 2 ** (len(mult) - 1)
        self.logit_head = nn.Sequential(normalization(ch_mid), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                        zero_module(conv_nd(2, ch_mid, 1, 1)), nn.Flatten())
        self.afd_head = nn.Sequential(normalization(ch0 + ch_mid), nn.SiLU(),
                                      zero_module(conv_nd(2, ch0 + ch_mid, self.in_channels, 3, padding=1)))

    def _encode(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None):
        """The shared trunk: (middle-block output h [N, C_mid, H/ds, W/ds], input-block outputs hs, emb [N, E])."""
        emb = self._embedding(x, t, y)
        hs, h = [], x.to(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        return self.middle_block(h, emb), hs, emb

    def forward(self, x_prev: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *,
                denoise: bool = True):
        """x_prev: [N, C, H, W] (real x_{t−1} or generated x'_{t−1}), t: int64 [N], y: [N] or None ->
        (logit [N], afd_pred [N, C, H, W], denoised [N, C, H, W]) in x_prev's dtype; denoise=False skips the decoder
        and returns None for denoised (the generator's step and the fake half of the discriminator's need no x̂_0)."""
        _check_image("x_prev", x_prev, self.in_channels, len(self.channel_mult))
        h, hs, emb = self._encode(x_prev, t, y)
        feat = h.to(x_prev.dtype)
        logit = self.logit_head[4](self.logit_head[3](self.logit_head[2](adagn(feat, self.logit_head[0]))))[:, 0]
        full = hs[self.num_res_blocks].to(x_prev.dtype)     # last level-0 input block: full resolution
        up = F.interpolate(feat, scale_factor=self.feature_downsample, mode="nearest")
        afd_pred = self.afd_head[2](adagn(torch.cat([full, up], dim=1), self.afd_head[0]))
        if not denoise:
            return logit, afd_pred, None
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        denoised = self.out[2](adagn(h.to(x_prev.dtype), self.out[0]))
        return logit, afd_pred, denoised


class UNetDDGANDiscriminator(EncoderUNetModel):
    """DDGAN's joint discriminator D_φ(x_{t−1}, x_t, t) on images: an ADM half-UNet on the channel concatenation
    [x_{t−1}, x_t], pooled to one logit ("adaptive" head).

    in_channels: the data's channels C (the encoder reads 2·C); every other EncoderUNetModel keyword argument is
    accepted except out_channels (1) and pool (adaptive). num_classes: optional class conditioning by projection
    (Miyato & Koyama 2018): logit += ⟨embed(y), pooled features⟩. forward(x_prev, t, x_t, y) -> logit [N].

    DDGAN's R1 penalty differentiates the input gradient again (double backward). The middle block's attention is
    always there (ADM), and on CPU the `auto` backend's attention (PyTorch's flash SDPA) has no double backward
    ("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"), so
    DDGANObjective / SIDDMObjective run the discriminator's pass on real samples under the `reference` backend
    whenever r1_gamma > 0.
    """

    def __init__(self, *, in_channels: int, num_classes: int | None = None, **encoder_kwargs):
        for fixed in ("out_channels", "pool"):
            if fixed in encoder_kwargs:
                raise ValueError(f"UNetDDGANDiscriminator: {fixed} is fixed (one logit, adaptive pooling); "
                                 f"do not pass it")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"UNetDDGANDiscriminator: in_channels must be a positive int, got {in_channels!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"UNetDDGANDiscriminator: num_classes must be a positive int or None, got "
                             f"{num_classes!r}")
        _check_2d("UNetDDGANDiscriminator", encoder_kwargs)
        super().__init__(in_channels=2 * in_channels, out_channels=1, pool="adaptive", **encoder_kwargs)
        self.data_channels, self.num_classes = in_channels, num_classes
        if num_classes is not None:
            self.class_proj = nn.Embedding(num_classes, self.feature_channels)
            nn.init.zeros_(self.class_proj.weight)

    def forward(self, x_prev: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """x_prev, x_t: [N, C, H, W], t: int64 [N], y: [N] or None -> logit [N] in x_prev's dtype."""
        levels = len(self.channel_mult)
        _check_image("x_prev", x_prev, self.data_channels, levels)
        _check_image("x_t", x_t, self.data_channels, levels)
        if x_t.shape != x_prev.shape:
            raise ValueError(f"x_t and x_prev must have the same shape, got {tuple(x_t.shape)} and "
                             f"{tuple(x_prev.shape)}")
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("pass class labels y if and only if the discriminator is class-conditional "
                             f"(num_classes={self.num_classes})")
        h = self.forward_features(torch.cat([x_prev, x_t.to(x_prev.dtype)], dim=1), t)
        pooled = self.out[2](adagn(h, self.out[0]))           # [N, C', 1, 1]
        logit = self.out[4](self.out[3](pooled))[:, 0]
        if y is not None:
            y = check_labels(y, x_prev.shape[0], self.num_classes, "UNetDDGANDiscriminator")
            logit = logit + (self.class_proj(y) * pooled.flatten(1)).sum(dim=1)
        return logit
