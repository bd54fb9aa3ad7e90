"""Patch existing models in place so their normalisations (GroupNorm + SiLU + AdaGN scale/shift, adaLN LayerNorm /
RMSNorm + modulation + gated residual), GEGLU activations and attention run through fastdiff's fused ops.

`patch(model)` replaces, in place and reversibly, the forward of the modules that compute a norm (with the SiLU,
scale/shift or residual around it) with one fused op call, and swaps attention processors; `unpatch(model)` restores the original forwards exactly. Module objects, parameters, buffers and state-dict keys
never change: only instance-level `forward` / `_forward` attributes and diffusers attention processors are set
(and removed again), so a patched model saves, loads, moves between devices and deep-copies like the original.

Sites (one per norm whose work a fused op now does, one per attention module, one per GEGLU):

- diffusers `ResnetBlock2D` (`UNet2DModel`, and any model built from these blocks): the block's forward becomes
  a copy of diffusers' `ResnetBlock2D.forward` in which norm1 → nonlinearity and norm2 (→ time scale/shift when
  `time_embedding_norm == "scale_shift"`) → nonlinearity are each one `adagn` call (act "silu" when the block's
  nonlinearity is `nn.SiLU`, else act "none" followed by the block's own nonlinearity): 2 sites per block.
- A GroupNorm followed by SiLU held as `conv_norm_out` / `conv_act` (diffusers' `UNet2DModel` output head): the
  norm's forward becomes `adagn(..., act="silu")` and the SiLU's forward the identity: 1 site.
- The transformer side of diffusers' models (UNet2DConditionModel's transformer blocks, DiT, PixArt, SD3, Flux, the
  attention of AutoencoderKL and UNet2DModel): adaLN modules, transformer blocks, GEGLU feed-forwards and attention
  processors get the fused forwards of `fastdiff/adapters/diffusers_blocks.py` (`adaln_modulate`, `geglu`,
  `attention`; its docstring lists the sites); `attention=False` leaves the attention processors alone.
- The GroupNorm in front of a diffusers `Transformer2DModel`'s proj_in: `adagn(..., act="none")`: 1 site.
- guided-diffusion / improved-diffusion `ResBlock`s (in_layers = [GroupNorm32, SiLU, conv], out_layers =
  [GroupNorm32, SiLU, Dropout, conv]): the instance `_forward` (which their gradient-checkpointed `forward` calls)
  becomes guided-diffusion's `ResBlock._forward` with GN → SiLU and GN → (1 + scale, shift) → SiLU each one `adagn`
  call: 2 sites per block.
- The GroupNorm32 → SiLU pairs of a guided-diffusion `out` head (`UNetModel.out`, the encoder's heads): as for
  diffusers' head: 1 site.
- guided-diffusion / improved-diffusion `QKVAttentionLegacy` / `QKVAttention` (by class name, parameter-free):
  forward `fastdiff.ops.qkv_attention(qkv, n_heads, legacy)`: 1 site each (`attention=False` skips them).
- Any other guided-diffusion / improved-diffusion `GroupNorm32` (any `nn.GroupNorm` subclass named GroupNorm32
  that is not fastdiff's own; e.g. AttentionBlock.norm): forward `adagn(x.float(), ..., act="none").type(x.dtype)`,
  the same computation as their `super().forward(x.float()).type(x.dtype)`: 1 site each.

fastdiff's own models (`fastdiff.models`) already call the fused ops, so patching them replaces nothing and returns
0. Numerics: fp32 outputs equal the original within the rounding of a different reduction order (~1e-6 relative);
under autocast the fused norm computes and returns fp32, as `F.group_norm` does under autocast.

Other diffusers attention processors (xformers, sliced, IP-adapter, ...) are left alone. Inputs in channels-last
memory format stay channels-last through the fused GroupNorms (`adagn` keeps the layout).
"""
from __future__ import annotations

import sys
import types
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from fastdiff import ops
from fastdiff.adapters import diffusers_blocks as _blocks
from fastdiff.adapters.diffusers_blocks import FusedAttnProcessor, fused_on

__all__ = ["FusedAttnProcessor", "is_patched", "patch", "unpatch"]

#: Name of the instance attribute that marks a patched module; it holds (method name, the module's own attribute of
#: that name from before patching, or `_NO_FORWARD` when it had none, i.e. it used its class's method).
_MARK = "_fastdiff_patch_saved_forward"
_NO_FORWARD = "<class forward>"
#: Instance attribute of a diffusers Attention whose processor fastdiff replaced; it holds the original processor.
_ATTN_MARK = "_fastdiff_patch_saved_processor"


# ----------------------------------------------------------------------------------------------- fused helpers


def _norm_act(norm: nn.GroupNorm, x: torch.Tensor, act: str, scale: torch.Tensor | None = None,
              shift: torch.Tensor | None = None) -> torch.Tensor:
    """act(norm(x) · (1 + scale) + shift) through `fastdiff.ops.adagn`.

    norm: an affine nn.GroupNorm (γ, β: [C], its group count and eps); x: [N, C, *spatial]; scale, shift: optional,
    any shape holding one value per (sample, channel) ([N, C], [N, C, 1, 1], or batch 1 broadcast over N).
    Under autocast x is computed in fp32 and the result is fp32 (what `F.group_norm` does under autocast);
    otherwise the result has x's dtype and γ, β, scale, shift are cast to it.
    """
    if torch.is_autocast_enabled(x.device.type) and x.is_floating_point():
        x = x.float()
    n, c = x.shape[0], x.shape[1]
    weight, bias = norm.weight.to(x.dtype), norm.bias.to(x.dtype)
    per_channel = lambda v: None if v is None else v.to(x.dtype).reshape(v.shape[0], c).expand(n, c)
    return ops.adagn(x, weight, bias, norm.num_groups, norm.eps, scale=per_channel(scale), shift=per_channel(shift),
                     act=act)


def _fusable_norm(m) -> bool:
    """True when m is an affine nn.GroupNorm whose forward is nn.GroupNorm's own (no subclass override)."""
    return (isinstance(m, nn.GroupNorm) and type(m).forward is nn.GroupNorm.forward and m.affine
            and m.weight is not None and m.bias is not None)


def _is_silu(m) -> bool:
    """True when m is a plain nn.SiLU module (not patched, not a subclass overriding forward)."""
    return isinstance(m, nn.SiLU) and type(m).forward is nn.SiLU.forward and _MARK not in m.__dict__


# ----------------------------------------------------------------------------------------------- diffusers


def _diffusers_resnet_block_2d():
    """diffusers' ResnetBlock2D class, or None when diffusers is not imported (then no model can contain one)."""
    if "diffusers" not in sys.modules:
        return None
    try:
        from diffusers.models.resnet import ResnetBlock2D
    except ImportError:  # a diffusers without this module layout: nothing of it to patch
        return None
    return ResnetBlock2D


# Third-party code: adapted from diffusers 0.42.1, src/diffusers/models/resnet.py, `ResnetBlock2D.forward`
# (Copyright The HuggingFace Team, Apache License 2.0). Only the norm → activation steps differ. The sha256 of the
# upstream method's source it was adapted from; tests/adapters/test_patch.py fails when the installed diffusers
# (pinned to the range README "Supported versions" lists) has another one, so a changed forward is re-synced.
RESNET_FORWARD_ORIGIN = ("diffusers", "0.42.1", "e3f38e1722955caf8219056735b2d67adfdc670553e701714bc47f4dac1a31e7")


def _resnet_block_2d_forward(self, input_tensor: torch.Tensor, temb: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """diffusers' `ResnetBlock2D.forward` with norm1 → nonlinearity and norm2 (→ scale/shift) → nonlinearity fused
    into `fastdiff.ops.adagn` calls; every other step is the same, in the same order (see RESNET_FORWARD_ORIGIN)."""
    if len(args) > 0 or kwargs.get("scale", None) is not None:
        from diffusers.utils import deprecate

        deprecation_message = "The `scale` argument is deprecated and will be ignored. Please remove it, as passing it will raise an error in the future. `scale` should directly be passed while calling the underlying pipeline component i.e., via `cross_attention_kwargs`."
        deprecate("scale", "1.0.0", deprecation_message)

    if not fused_on(input_tensor):
        return type(self).forward(self, input_tensor, temb, *args, **kwargs)
    silu = _is_silu(self.nonlinearity)
    act = "silu" if silu else "none"

    def finish(h):
        return h if silu else self.nonlinearity(h)

    hidden_states = input_tensor

    hidden_states = finish(_norm_act(self.norm1, hidden_states, act))

    if self.upsample is not None:
        # upsample_nearest_nhwc fails with large batch sizes (a diffusers limitation it works around too)
        if hidden_states.shape[0] >= 64:
            input_tensor = input_tensor.contiguous()
            hidden_states = hidden_states.contiguous()
        input_tensor = self.upsample(input_tensor)
        hidden_states = self.upsample(hidden_states)
    elif self.downsample is not None:
        input_tensor = self.downsample(input_tensor)
        hidden_states = self.downsample(hidden_states)

    hidden_states = self.conv1(hidden_states)

    if self.time_emb_proj is not None:
        if not self.skip_time_act:
            temb = self.nonlinearity(temb)
        temb = self.time_emb_proj(temb)[:, :, None, None]

    if self.time_embedding_norm == "default":
        if temb is not None:
            hidden_states = hidden_states + temb
        hidden_states = _norm_act(self.norm2, hidden_states, act)
    elif self.time_embedding_norm == "scale_shift":
        if temb is None:
            raise ValueError(f" `temb` should not be None when `time_embedding_norm` is {self.time_embedding_norm}")
        time_scale, time_shift = torch.chunk(temb, 2, dim=1)
        hidden_states = _norm_act(self.norm2, hidden_states, act, scale=time_scale, shift=time_shift)
    else:
        hidden_states = _norm_act(self.norm2, hidden_states, act)

    hidden_states = finish(hidden_states)

    hidden_states = self.dropout(hidden_states)
    hidden_states = self.conv2(hidden_states)

    if self.conv_shortcut is not None:
        # contiguous() only while training (DDP gradient stride warning), as diffusers does
        if self.training:
            input_tensor = input_tensor.contiguous()
        input_tensor = self.conv_shortcut(input_tensor)

    output_tensor = (input_tensor + hidden_states) / self.output_scale_factor

    return output_tensor


def _norm_silu_forward(self, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm + SiLU in one `adagn` call (the following SiLU module is made the identity)."""
    return _norm_act(self, x, "silu") if fused_on(x) else F.silu(nn.GroupNorm.forward(self, x))


def _identity_forward(self, x: torch.Tensor) -> torch.Tensor:
    """The identity: this SiLU's work is done by the fused norm before it."""
    return x


def _group_norm_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A lone GroupNorm (e.g. the one in front of a Transformer2DModel's proj_in) through `adagn`."""
    return _norm_act(self, x, "none") if fused_on(x) else nn.GroupNorm.forward(self, x)


# ----------------------------------------------------------------------------------------------- guided-diffusion


def _foreign(m, *names: str) -> bool:
    """True when m's class is named one of `names` and is not fastdiff's own (which already runs the fused ops)."""
    cls = type(m)
    return cls.__name__ in names and not cls.__module__.startswith("fastdiff.")


def _is_foreign_groupnorm32(m) -> bool:
    """True for guided-diffusion / improved-diffusion's affine GroupNorm32 (by class name)."""
    return (isinstance(m, nn.GroupNorm) and _foreign(m, "GroupNorm32") and m.affine
            and m.weight is not None and m.bias is not None)


def _is_gd_silu(m) -> bool:
    """A plain nn.SiLU, or improved-diffusion's `SiLU` module (x · sigmoid(x), for PyTorch < 1.7)."""
    return _is_silu(m) or (_foreign(m, "SiLU") and type(m).__module__.split(".")[0] in ("guided_diffusion",
                                                                                        "improved_diffusion"))


def _groupnorm32_forward(self, x: torch.Tensor) -> torch.Tensor:
    """guided-diffusion's `GroupNorm32.forward`, `super().forward(x.float()).type(x.dtype)`, through `adagn`."""
    if not fused_on(x):
        return type(self).forward(self, x)
    return _norm_act(self, x.float(), "none").type(x.dtype)


def _groupnorm32_silu_forward(self, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm32 then SiLU (the SiLU module after it is made the identity) in one `adagn` call."""
    if not fused_on(x):
        return F.silu(type(self).forward(self, x))
    return _norm_act(self, x.float(), "silu").type(x.dtype)


def _fusable_gd_resblock(m) -> bool:
    """A guided-diffusion / improved-diffusion `ResBlock`: in_layers = [GroupNorm32, SiLU, conv], out_layers =
    [GroupNorm32, SiLU, Dropout, conv], and a `_forward(x, emb)` that its `forward` (gradient checkpointing) calls."""
    if not _foreign(m, "ResBlock") or "_forward" in m.__dict__:
        return False
    ins, outs = getattr(m, "in_layers", None), getattr(m, "out_layers", None)
    return (isinstance(ins, nn.Sequential) and len(ins) == 3 and isinstance(outs, nn.Sequential) and len(outs) >= 3
            and all(_is_foreign_groupnorm32(s[0]) and _is_gd_silu(s[1]) for s in (ins, outs))
            and hasattr(m, "emb_layers") and hasattr(m, "skip_connection") and hasattr(m, "use_scale_shift_norm"))


def _gd_resblock_forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """guided-diffusion's `ResBlock._forward` (ADM §3, AdaGN): h = conv(SiLU(GN(x))) (BigGAN up/down between the
    SiLU and the conv when `updown`), then SiLU(GN(h) · (1 + scale) + shift) with (scale, shift) = emb_layers(emb)
    (or SiLU(GN(h + emb_layers(emb))) without scale-shift norm), dropout, conv, plus the skip connection; each
    GN → (scale-shift) → SiLU is one `adagn` call. x: [N, C, *spatial]; emb: [N, E]."""
    if not fused_on(x):
        return type(self)._forward(self, x, emb)
    in_norm, in_conv = self.in_layers[0], self.in_layers[-1]
    h = _norm_act(in_norm, x, "silu").type(x.dtype)
    if getattr(self, "updown", False):
        h = self.h_upd(h)
        x = self.x_upd(x)
    h = in_conv(h)
    emb_out = self.emb_layers(emb).type(h.dtype)
    out_norm, out_rest = self.out_layers[0], self.out_layers[2:]
    if self.use_scale_shift_norm:
        scale, shift = torch.chunk(emb_out, 2, dim=1)
        h = _norm_act(out_norm, h, "silu", scale=scale, shift=shift).type(h.dtype)
    else:
        h = _norm_act(out_norm, h + emb_out.reshape(*emb_out.shape, *([1] * (h.ndim - 2))), "silu").type(h.dtype)
    return self.skip_connection(x) + out_rest(h)


def _qkv_attention_forward(self, qkv: torch.Tensor) -> torch.Tensor:
    """guided-diffusion's `QKVAttentionLegacy` / `QKVAttention` forward: qkv [N, 3·H·C, T] → [N, H·C, T] through
    `fastdiff.ops.qkv_attention` (same 1/√C scaling, softmax in fp32). improved-diffusion's QKVAttention has no
    `n_heads` (its caller folds heads into the batch): one head, where both head orders coincide."""
    return ops.qkv_attention(qkv, getattr(self, "n_heads", 1), legacy=type(self).__name__ == "QKVAttentionLegacy")


def _is_foreign_qkv_attention(m) -> bool:
    """guided-diffusion / improved-diffusion's parameter-free QKVAttention(Legacy) module (by class name)."""
    return (_foreign(m, "QKVAttention", "QKVAttentionLegacy") and "forward" not in m.__dict__
            and next(m.parameters(), None) is None)


# ----------------------------------------------------------------------------------------------- patch / unpatch


def _set_method(module: nn.Module, fn, name: str = "forward") -> None:
    """Give `module` the instance method `name` = `fn`, remembering what it had so `unpatch` can restore it."""
    module.__dict__[_MARK] = (name, module.__dict__.get(name, _NO_FORWARD))
    module.__dict__[name] = types.MethodType(fn, module)


def is_patched(module: nn.Module) -> bool:
    """True when `module` itself (not its children) has a forward or attention processor installed by
    `fastdiff.patch`."""
    return _MARK in module.__dict__ or _ATTN_MARK in module.__dict__


def _norm_then_silu(norm, act, uses: Counter) -> bool:
    """True when `norm` (a GroupNorm) and the SiLU `act` after it can be fused: neither patched nor carrying its own
    forward, and each used exactly once in the model (a shared SiLU cannot become the identity)."""
    return (not is_patched(norm) and not is_patched(act) and "forward" not in norm.__dict__
            and "forward" not in act.__dict__ and uses[id(norm)] == 1 and uses[id(act)] == 1)


def patch(model: nn.Module, attention: bool = True) -> int:
    """Swap, in place, the normalisations, GEGLU activations and attention of `model` for fused fastdiff ops.

    Handles diffusers `ResnetBlock2D` blocks (norm1 → act and norm2 → scale/shift → act), a `conv_norm_out` GroupNorm
    followed by a `conv_act` SiLU (the heads of diffusers' UNets and VAE decoders / encoders), the transformer blocks,
    adaLN modules, GEGLUs and attention processors of diffusers' UNet2DConditionModel, DiT, PixArt, SD3 and Flux
    transformers (diffusers_blocks.py), a Transformer2DModel's GroupNorm; guided-diffusion / improved-diffusion `ResBlock`s (both GN → (scale-shift) → SiLU),
    the GroupNorm32 → SiLU pairs of their `out` heads, their other `GroupNorm32` modules and their
    `QKVAttention(Legacy)` modules. See the module docstring. `attention=False` leaves attention alone. Outputs
    equal the original within fp32 rounding. Idempotent: sites already patched are left alone. Reversed exactly by
    `unpatch(model)`.

    Returns the number of sites newly replaced (one per norm whose work a fused op now does, one per attention, one
    per GEGLU; 0 when there is nothing to patch, e.g. fastdiff's own models, or when `model` is already patched).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch: model must be a torch.nn.Module, got {type(model).__name__}")
    resnet_cls = _diffusers_resnet_block_2d()
    blocks = _blocks.classes()
    # How many times each module object occurs in the tree: a shared SiLU cannot become the identity.
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    covered = set()  # GroupNorm32s whose work a patched block or head now does: not patched (or counted) again
    count = 0
    for m in list(model.modules()):
        if is_patched(m) or id(m) in covered:
            if m.__dict__.get(_MARK, ("",))[0] == "_forward":  # a ResBlock patched before: its norms stay as they are
                covered.update((id(m.in_layers[0]), id(m.out_layers[0])))
            continue
        if (resnet_cls is not None and type(m) is resnet_cls and "forward" not in m.__dict__
                and _fusable_norm(m.norm1) and _fusable_norm(m.norm2)):
            _set_method(m, _resnet_block_2d_forward)
            count += 2
        elif _fusable_gd_resblock(m) and not any(is_patched(s[0]) for s in (m.in_layers, m.out_layers)):
            _set_method(m, _gd_resblock_forward, "_forward")
            covered.update((id(m.in_layers[0]), id(m.out_layers[0])))
            count += 2
        elif attention and blocks is not None and _blocks.fused_processor(m) is not None:
            processor = m.processor
            m.processor = _blocks.fused_processor(m)(processor)
            m.__dict__[_ATTN_MARK] = processor
            count += 1
        elif blocks is not None and "forward" not in m.__dict__ and _blocks.fused_forward(m) is not None:
            fn, sites = _blocks.fused_forward(m)
            _set_method(m, fn)
            count += sites
        elif attention and _is_foreign_qkv_attention(m):
            _set_method(m, _qkv_attention_forward)
            count += 1
        elif _is_foreign_groupnorm32(m) and "forward" not in m.__dict__:
            _set_method(m, _groupnorm32_forward)
            count += 1
        norm = getattr(m, "norm", None)  # the GroupNorm in front of a Transformer2DModel's proj_in
        if (blocks is not None and type(m) is blocks["Transformer2DModel"] and _fusable_norm(norm)
                and not is_patched(norm) and "forward" not in norm.__dict__):
            _set_method(norm, _group_norm_forward)
            count += 1
        norm, act = getattr(m, "conv_norm_out", None), getattr(m, "conv_act", None)
        if (isinstance(norm, nn.Module) and isinstance(act, nn.Module) and _fusable_norm(norm) and _is_silu(act)
                and _norm_then_silu(norm, act, uses)):
            _set_method(norm, _norm_silu_forward)
            _set_method(act, _identity_forward)
            count += 1
        head = getattr(m, "out", None)  # guided-diffusion heads: out = Sequential(..., GroupNorm32, SiLU, ...)
        if isinstance(head, nn.Sequential):
            for norm, act in zip(head[:-1], head[1:]):
                if _is_foreign_groupnorm32(norm) and _is_gd_silu(act) and _norm_then_silu(norm, act, uses):
                    _set_method(norm, _groupnorm32_silu_forward)
                    _set_method(act, _identity_forward)
                    covered.add(id(norm))
                    count += 1
    return count


def unpatch(model: nn.Module) -> int:
    """Undo `patch(model)`: every module patched by fastdiff gets back exactly the method it had before (its class's,
    or its own earlier instance attribute), and every patched diffusers Attention its original processor object.
    Returns the number of modules restored (0 if none was patched)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"unpatch: model must be a torch.nn.Module, got {type(model).__name__}")
    restored = 0
    for m in model.modules():
        if _ATTN_MARK in m.__dict__:
            m.processor = m.__dict__.pop(_ATTN_MARK)
            restored += 1
        if _MARK not in m.__dict__:
            continue
        name, saved = m.__dict__.pop(_MARK)
        if isinstance(saved, str) and saved == _NO_FORWARD:
            m.__dict__.pop(name, None)
        else:
            m.__dict__[name] = saved
        restored += 1
    return restored
