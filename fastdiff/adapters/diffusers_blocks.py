"""Fused forwards for the blocks of diffusers' transformer models, installed by `fastdiff.patch` (adapters/patch.py).

What each replaces (one *site* per norm whose work a fused op now does, one per attention, one per GEGLU):

- `AdaLayerNormZero`, `AdaLayerNormZeroSingle`, `AdaLayerNormContinuous` (DiT, SD3, Flux; Peebles & Xie 2023,
  adaLN-Zero): the module keeps its embedding MLP; LayerNorm / RMSNorm → ·(1 + scale) + shift is one
  `fastdiff.ops.adaln_modulate` call. 1 site.
- `BasicTransformerBlock` with `norm_type` "ada_norm_zero" (DiT) or "ada_norm_single" (PixArt-α/Σ): each
  modulated LayerNorm, with the (gated) residual add in front of it, is one `adaln_modulate`; the gated feed-forward
  residual is one `torch.addcmul`. 1 site per LayerNorm it fuses (1 for DiT, whose AdaLayerNormZero is a site of
  its own, 2 for PixArt). The plain "layer_norm" blocks of SD / SDXL UNets are left alone: an unmodulated LayerNorm
  is already one torch kernel (their GEGLU and attention are patched).
- `JointTransformerBlock` (SD3) and `FluxTransformerBlock`: h + gate·attention → norm2 → modulate is one gated
  `adaln_modulate`, for the image and the text stream: 2 sites (1 for SD3's last, context-pre-only block).
- `WanTransformerBlock` (Wan 2.1 / 2.2): the fp32 LayerNorm → modulate before the self-attention and the
  feed-forward: 2 sites. `LTXVideoTransformerBlock`: RMSNorm → per-token modulate before the self-attention, and
  the cross-attention residual + RMSNorm → modulate before the feed-forward: 2 sites.
- `GEGLU` (the SD / SDXL feed-forward): proj → split → value·GELU(gate) becomes proj → `fastdiff.ops.geglu`. 1 site.
- `Attention` on `AttnProcessor2_0` (self- and cross-attention of the UNets, DiT, PixArt, the VAE's mid block),
  `JointAttnProcessor2_0` (SD3) and `FluxAttention` on `FluxAttnProcessor`: the processor is swapped for one that
  calls `fastdiff.ops.attention` on diffusers' [B, L, H·D] projections (and `adagn` for a group norm). Calls a
  fused processor does not cover (masks, spatial norm, deprecated arguments, a chosen attention backend) go to
  the original processor. 1 site.

Every fused forward computes what the upstream forward computes, step for step, in the same dtype; where it cannot
(a configuration it does not cover, dtypes that would promote, autocast), it calls the upstream code. The block
forwards are written from diffusers' sources; `UPSTREAM` records which, and tests/adapters/test_patch_diffusers.py
fails when the installed diffusers has another version of them.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from fastdiff import ops

__all__ = ["FusedAttnProcessor", "FusedFluxAttnProcessor", "FusedJointAttnProcessor"]

#: (qualified name of the upstream method, sha256 of its source in diffusers 0.42.1) for every forward or processor
#: these fused versions follow.
UPSTREAM = {
    "diffusers.models.attention.BasicTransformerBlock.forward":
        "440071576ac5ee6fbd031e878fa3e6f6446575c5d4fcbaec360702dead4a9a49",
    "diffusers.models.attention.JointTransformerBlock.forward":
        "9dd8f9decdd272842fae5d2bbbf02d714f6938db264ebb9c7ae0a40def917552",
    "diffusers.models.transformers.transformer_flux.FluxTransformerBlock.forward":
        "0b184cbe172708b6f072a779e13866a44ef5a8ee706fcd3e6887923b11c00785",
    "diffusers.models.transformers.transformer_wan.WanTransformerBlock.forward":
        "21c15441b009932c886757e6fee7875fa866ce1bc2746743cadec3f6c1ad865d",
    "diffusers.models.transformers.transformer_ltx.LTXVideoTransformerBlock.forward":
        "da45ce5e81f3b50e72f4ae0b2b604738a68e5af141db3a1d7adc5ccd0d508dac",
    "diffusers.models.normalization.AdaLayerNormZero.forward":
        "93374820c014f8127713d1ba0a6be6bba27e7040238781fd56e42e87bb5366cb",
    "diffusers.models.normalization.AdaLayerNormZeroSingle.forward":
        "d48dfb2b1e75e64f48dbe314db50f716acbd81946ad08387b858d08f47bba077",
    "diffusers.models.normalization.AdaLayerNormContinuous.forward":
        "da3e50ebcd024fc2040e7e4afc211c8717142198b743486e507c0770fa4b2909",
    "diffusers.models.activations.GEGLU.forward":
        "28ea6dd13c76df98383b21bd02e12fe4feaac7d046fb9383feb90bb900c4c8b3",
    "diffusers.models.attention_processor.AttnProcessor2_0.__call__":
        "bf23ea5ae40404272695b752532af4cef782d7626168f17e9f0d6652a941dd67",
    "diffusers.models.attention_processor.JointAttnProcessor2_0.__call__":
        "392b6bf56c8505d1abc491adae261ecdfe9ed83966571fc9fa3bc838173975d3",
    "diffusers.models.transformers.transformer_flux.FluxAttnProcessor.__call__":
        "d5b36134887ebe450b6c15f200bf33f781ba8258201d25caceb16bb9bc07d2c9",
}


_CLASSES: dict[str, type] = {}


def classes() -> dict[str, type] | None:
    """diffusers' classes these forwards stand in for, by name; None when diffusers is not imported (then no model
    can contain them)."""
    if _CLASSES:
        return _CLASSES
    if "diffusers" not in sys.modules:
        return None
    try:
        from diffusers.models.activations import GEGLU
        from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock
        from diffusers.models.attention_processor import Attention, AttnProcessor2_0, JointAttnProcessor2_0
        from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero, AdaLayerNormZeroSingle
        from diffusers.models.transformers.transformer_2d import Transformer2DModel
        from diffusers.models.transformers.transformer_flux import (FluxAttention, FluxAttnProcessor,
                                                                    FluxTransformerBlock)
        from diffusers.models.transformers.transformer_ltx import LTXVideoTransformerBlock
        from diffusers.models.transformers.transformer_wan import WanTransformerBlock
    except ImportError:  # a diffusers without this module layout: nothing of it to patch
        return None
    for cls in (GEGLU, BasicTransformerBlock, JointTransformerBlock, Attention, AttnProcessor2_0, JointAttnProcessor2_0,
                AdaLayerNormContinuous, AdaLayerNormZero, AdaLayerNormZeroSingle, Transformer2DModel, FluxAttention,
                FluxAttnProcessor, FluxTransformerBlock, LTXVideoTransformerBlock, WanTransformerBlock):
        _CLASSES[cls.__name__] = cls
    return _CLASSES


# ----------------------------------------------------------------------------------------------- fused helpers

#: CPU tensors with fewer elements than this run the upstream torch ops instead of a fused op: there a call's fixed
#: cost (Python, the dispatcher) outweighs the memory passes fusion saves, and a whole tiny model measured slower
#: patched than stock (docs/architecture.md, "Patching other people's models"). CUDA tensors always take the fused
#: ops (fewer launches).
CPU_FUSED_MIN_NUMEL = 1 << 14


def fused_on(x: torch.Tensor) -> bool:
    """Whether a patched forward runs the fused op on x (see CPU_FUSED_MIN_NUMEL)."""
    return not x.is_cpu or x.numel() >= CPU_FUSED_MIN_NUMEL


def _norm_kind(norm) -> str | None:
    """"layer" for an nn.LayerNorm (or diffusers' FP32LayerNorm) over the last dim, "rms" for diffusers' RMSNorm
    without bias (the two norms `adaln_modulate` computes), else None."""
    kind = type(norm)
    if kind is nn.LayerNorm or (kind.__name__ == "FP32LayerNorm"  # LayerNorm computed in fp32: what the op does
                                and kind.__module__ == "diffusers.models.normalization"):
        return "layer" if len(norm.normalized_shape) == 1 else None
    if kind.__name__ == "RMSNorm" and kind.__module__ == "diffusers.models.normalization":
        return "rms" if norm.bias is None and len(norm.dim) == 1 else None
    return None


def _eager(norm, x, scale, shift, residual, gate):
    """The upstream expressions: h = residual + gate·x; norm(h)·(1 + scale) + shift (scale, shift, gate: [B, D],
    [B, 1, D] or [B, L, D])."""
    per_token = lambda v: v[:, None] if v.dim() == 2 else v
    h = x if residual is None else residual + (per_token(gate) * x if gate is not None else x)
    out = norm(h) * (1 + per_token(scale)) + per_token(shift)
    return (h, out) if residual is not None else out


def modulate(norm, x, scale, shift, *, residual=None, gate=None):
    """norm(x)·(1 + scale) + shift as one `fastdiff.ops.adaln_modulate` call (DiT §3.2, adaLN).

    norm: an nn.LayerNorm over the last dim, diffusers' FP32LayerNorm or RMSNorm (without bias), as checked when
    patching; its weight, bias and eps are used; x: [B, L, D]; scale, shift, gate: [B, D], [B, 1, D] or [B, L, D]
    (gate optional). With `residual` ([B, L, D]) the gated residual h = residual + gate·x (gate None: 1) is formed
    first and normalised, and (h, out) is returned. Under autocast, or when the tensors do not all share x's dtype
    (upstream would promote), the upstream expressions run instead, so the result and its dtype are upstream's.
    """
    dtype = x.dtype
    weight, bias = norm.weight, norm.bias
    if (scale.dtype != dtype or shift.dtype != dtype or (residual is not None and residual.dtype != dtype)
            or (gate is not None and gate.dtype != dtype) or (weight is not None and weight.dtype != dtype)
            or (bias is not None and bias.dtype != dtype) or torch.is_autocast_enabled(x.device.type)):
        return _eager(norm, x, scale, shift, residual, gate)
    kind = "rms" if type(norm).__name__ == "RMSNorm" else "layer"
    return ops.adaln_modulate(x, scale, shift, weight, bias, norm=kind, eps=norm.eps, residual=residual, gate=gate)


def _gated_add(h, y, gate):
    """h + gate·y in one kernel (gate: [B, D] or [B, 1, D], or None for 1)."""
    if gate is None:
        return h + y
    return torch.addcmul(h, gate[:, None] if gate.dim() == 2 else gate, y)


# ----------------------------------------------------------------------------------------------- adaLN modules


def _adaln_sites(module) -> int:
    return 1 if _norm_kind(module.norm) is not None else 0


def ada_layer_norm_zero_forward(self, x, timestep=None, class_labels=None, hidden_dtype=None, emb=None):
    """diffusers' `AdaLayerNormZero.forward` with norm → modulate fused: returns (modulated x, gate_msa, shift_mlp,
    scale_mlp, gate_mlp), each modulation [B, D]."""
    if not fused_on(x):
        return type(self).forward(self, x, timestep, class_labels, hidden_dtype, emb)
    if self.emb is not None:
        emb = self.emb(timestep, class_labels, hidden_dtype=hidden_dtype)
    emb = self.linear(self.silu(emb))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = emb.chunk(6, dim=1)
    return modulate(self.norm, x, scale_msa, shift_msa), gate_msa, shift_mlp, scale_mlp, gate_mlp


def ada_layer_norm_zero_single_forward(self, x, emb=None):
    """diffusers' `AdaLayerNormZeroSingle.forward` (Flux's single-stream blocks) with norm → modulate fused."""
    if not fused_on(x):
        return type(self).forward(self, x, emb)
    emb = self.linear(self.silu(emb))
    shift_msa, scale_msa, gate_msa = emb.chunk(3, dim=1)
    return modulate(self.norm, x, scale_msa, shift_msa), gate_msa


def ada_layer_norm_continuous_forward(self, x, conditioning_embedding):
    """diffusers' `AdaLayerNormContinuous.forward` (SD3 / Flux output norm) with norm → modulate fused."""
    if not fused_on(x):
        return type(self).forward(self, x, conditioning_embedding)
    emb = self.linear(self.silu(conditioning_embedding).to(x.dtype))
    scale, shift = torch.chunk(emb, 2, dim=1)
    return modulate(self.norm, x, scale, shift)


def geglu_forward(self, hidden_states, *args, **kwargs):
    """diffusers' `GEGLU.forward`: proj, then value·GELU(gate) of its two halves in one `fastdiff.ops.geglu`."""
    # deprecated arguments (upstream warns about them) and small CPU tensors take upstream's forward
    if args or kwargs.get("scale", None) is not None or not fused_on(hidden_states):
        return type(self).forward(self, hidden_states, *args, **kwargs)
    return ops.geglu(self.proj(hidden_states))


# ----------------------------------------------------------------------------------------------- blocks

def basic_block_sites(block) -> int:
    """How many modulated LayerNorms of a diffusers `BasicTransformerBlock` its fused forward computes with
    `adaln_modulate`: DiT's ("ada_norm_zero") feed-forward norm, PixArt's ("ada_norm_single") two. 0 for the plain
    "layer_norm" blocks of SD / SDXL UNets (nothing to fuse: torch's LayerNorm is one kernel) and configurations not
    covered."""
    if block.pos_embed is not None or hasattr(block, "fuser"):
        return 0
    if block.norm_type == "ada_norm_zero":
        norms = [block.norm3]
    elif block.norm_type == "ada_norm_single":
        norms = [block.norm1, block.norm2]
    else:
        return 0
    return len(norms) if all(_norm_kind(n) == "layer" for n in norms) else 0


def basic_block_forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                        encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None, class_labels=None,
                        added_cond_kwargs=None):
    """diffusers' `BasicTransformerBlock.forward` for norm types "ada_norm_zero" (DiT) and "ada_norm_single"
    (PixArt), each LayerNorm → modulate one `adaln_modulate`, with the gated residual in front of it (hidden_states:
    [B, L, D]).

    Self-attention, optional cross-attention, feed-forward, each pre-normed; adaLN-Zero gates the residual of the
    self-attention and the feed-forward (DiT §3.2). PixArt does not normalise before its cross-attention."""
    kwargs = dict(cross_attention_kwargs or {})
    if (hidden_states.dim() != 3 or self._chunk_size is not None or "gligen" in kwargs
            or kwargs.get("scale", None) is not None or not fused_on(hidden_states)):
        return type(self).forward(self, hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                                  timestep, cross_attention_kwargs, class_labels, added_cond_kwargs)
    pixart = self.norm_type == "ada_norm_single"
    if pixart:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + timestep.reshape(hidden_states.shape[0], 6, -1)).chunk(6, dim=1)
        norm_hidden_states = modulate(self.norm1, hidden_states, scale_msa, shift_msa)
    else:
        norm_hidden_states, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(
            hidden_states, timestep, class_labels, hidden_dtype=hidden_states.dtype)

    attn_output = self.attn1(norm_hidden_states,
                             encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
                             attention_mask=attention_mask, **kwargs)
    gate = gate_msa  # the gate of the residual not yet added (None: 1)
    if self.attn2 is not None:
        hidden_states = _gated_add(hidden_states, attn_output, gate)
        norm_hidden_states = hidden_states if pixart else self.norm2(hidden_states)  # PixArt: no norm here
        attn_output = self.attn2(norm_hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=encoder_attention_mask, **kwargs)
        gate = None
    hidden_states, norm_hidden_states = modulate(self.norm2 if pixart else self.norm3, attn_output, scale_mlp,
                                                 shift_mlp, residual=hidden_states, gate=gate)
    return _gated_add(hidden_states, self.ff(norm_hidden_states), gate_mlp)


def _gated_feed_forward(norm, ff, hidden_states, attn_output, gate_msa, shift_mlp, scale_mlp, gate_mlp):
    """h = h + gate_msa·attn; h + gate_mlp·ff(norm(h)·(1 + scale_mlp) + shift_mlp): the second half of an MM-DiT
    (SD3, Flux) block for one stream, the norm with its residual and modulation one `adaln_modulate`."""
    hidden_states, norm_hidden_states = modulate(norm, attn_output, scale_mlp, shift_mlp, residual=hidden_states,
                                                 gate=gate_msa)
    return _gated_add(hidden_states, ff(norm_hidden_states), gate_mlp)


def joint_block_sites(block) -> int:
    """Sites of an SD3 `JointTransformerBlock` (0 when not covered: SD3.5's dual attention)."""
    if block.use_dual_attention or _norm_kind(block.norm2) != "layer":
        return 0
    if block.context_pre_only:
        return 1
    return 2 if _norm_kind(block.norm2_context) == "layer" else 0


def joint_block_forward(self, hidden_states, encoder_hidden_states, temb, joint_attention_kwargs=None):
    """diffusers' `JointTransformerBlock.forward` (SD3's MM-DiT block, Esser et al. 2024) without dual attention,
    norm2 / norm2_context fused with their gated residuals. Returns (encoder_hidden_states, hidden_states)."""
    if self._chunk_size is not None or not fused_on(hidden_states):
        return type(self).forward(self, hidden_states, encoder_hidden_states, temb, joint_attention_kwargs)
    joint_attention_kwargs = joint_attention_kwargs or {}
    norm_hidden_states, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)
    if self.context_pre_only:
        norm_encoder_hidden_states = self.norm1_context(encoder_hidden_states, temb)
    else:
        norm_encoder_hidden_states, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(
            encoder_hidden_states, emb=temb)
    attn_output, context_attn_output = self.attn(hidden_states=norm_hidden_states,
                                                 encoder_hidden_states=norm_encoder_hidden_states,
                                                 **joint_attention_kwargs)
    hidden_states = _gated_feed_forward(self.norm2, self.ff, hidden_states, attn_output, gate_msa, shift_mlp,
                                        scale_mlp, gate_mlp)
    if self.context_pre_only:
        return None, hidden_states
    encoder_hidden_states = _gated_feed_forward(self.norm2_context, self.ff_context, encoder_hidden_states,
                                                context_attn_output, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp)
    return encoder_hidden_states, hidden_states


def flux_block_sites(block) -> int:
    return 2 if _norm_kind(block.norm2) == "layer" and _norm_kind(block.norm2_context) == "layer" else 0


def flux_block_forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None,
                       joint_attention_kwargs=None):
    """diffusers' `FluxTransformerBlock.forward` (Flux's double-stream block), norm2 / norm2_context fused with
    their gated residuals. Returns (encoder_hidden_states, hidden_states)."""
    if not fused_on(hidden_states):
        return type(self).forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb,
                                  joint_attention_kwargs)
    norm_hidden_states, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)
    norm_encoder_hidden_states, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(
        encoder_hidden_states, emb=temb)
    attention_outputs = self.attn(hidden_states=norm_hidden_states, encoder_hidden_states=norm_encoder_hidden_states,
                                  image_rotary_emb=image_rotary_emb, **(joint_attention_kwargs or {}))
    attn_output, context_attn_output = attention_outputs[:2]
    hidden_states = _gated_feed_forward(self.norm2, self.ff, hidden_states, attn_output, gate_msa, shift_mlp,
                                        scale_mlp, gate_mlp)
    if len(attention_outputs) == 3:  # IP-adapter output
        hidden_states = hidden_states + attention_outputs[2]
    encoder_hidden_states = _gated_feed_forward(self.norm2_context, self.ff_context, encoder_hidden_states,
                                                context_attn_output, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp)
    if encoder_hidden_states.dtype == torch.float16:
        encoder_hidden_states = encoder_hidden_states.clip(-65504, 65504)
    return encoder_hidden_states, hidden_states


def wan_block_sites(block) -> int:
    return 2 if _norm_kind(block.norm1) == "layer" and _norm_kind(block.norm3) == "layer" else 0


def wan_block_forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb):
    """diffusers' `WanTransformerBlock.forward` (Wan 2.1 / 2.2 video DiT), its two fp32 LayerNorm → modulate steps
    (self-attention and feed-forward inputs) each one `adaln_modulate` on the fp32 stream; modulation per sample
    (temb [B, 6, D]) or per token (temb [B, L, 6, D], Wan 2.2 TI2V); residuals in fp32 as upstream."""
    if not fused_on(hidden_states):
        return type(self).forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb)
    if temb.dim() == 4:
        ada = (self.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (v.squeeze(2) for v in ada)
    else:
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            self.scale_shift_table + temb.float()).chunk(6, dim=1)
    norm_hidden_states = modulate(self.norm1, hidden_states.float(), scale_msa, shift_msa).type_as(hidden_states)
    attn_output = self.attn1(norm_hidden_states, None, None, rotary_emb)
    hidden_states = (hidden_states.float() + attn_output * gate_msa).type_as(hidden_states)
    norm_hidden_states = self.norm2(hidden_states.float()).type_as(hidden_states)
    attn_output = self.attn2(norm_hidden_states, encoder_hidden_states, None, None)
    hidden_states = hidden_states + attn_output
    norm_hidden_states = modulate(self.norm3, hidden_states.float(), c_scale_msa, c_shift_msa).type_as(hidden_states)
    ff_output = self.ffn(norm_hidden_states)
    return (hidden_states.float() + ff_output.float() * c_gate_msa).type_as(hidden_states)


def ltx_block_sites(block) -> int:
    return 2 if _norm_kind(block.norm1) == "rms" and _norm_kind(block.norm2) == "rms" else 0


def ltx_block_forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None,
                      encoder_attention_mask=None):
    """diffusers' `LTXVideoTransformerBlock.forward` (LTX-Video): RMSNorm → modulate with per-token scale / shift
    (temb [B, T, 6·D], T = 1 or the token count) as one `adaln_modulate`, and the cross-attention residual fused
    into the feed-forward's RMSNorm → modulate."""
    if not fused_on(hidden_states):
        return type(self).forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb,
                                  encoder_attention_mask)
    batch_size = hidden_states.size(0)
    ada_values = self.scale_shift_table[None, None].to(temb.device) + temb.reshape(
        batch_size, temb.size(1), self.scale_shift_table.shape[0], -1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada_values.unbind(dim=2)
    norm_hidden_states = modulate(self.norm1, hidden_states, scale_msa, shift_msa)
    attn_hidden_states = self.attn1(hidden_states=norm_hidden_states, encoder_hidden_states=None,
                                    image_rotary_emb=image_rotary_emb)
    hidden_states = hidden_states + attn_hidden_states * gate_msa
    attn_hidden_states = self.attn2(hidden_states, encoder_hidden_states=encoder_hidden_states, image_rotary_emb=None,
                                    attention_mask=encoder_attention_mask)
    hidden_states, norm_hidden_states = modulate(self.norm2, attn_hidden_states, scale_mlp, shift_mlp,
                                                 residual=hidden_states)
    return hidden_states + self.ff(norm_hidden_states) * gate_mlp


#: The modules with a fused forward: class name -> (their sites (0: the configuration is not covered), forward).
_FORWARDS = {
    "BasicTransformerBlock": (basic_block_sites, basic_block_forward),
    "JointTransformerBlock": (joint_block_sites, joint_block_forward),
    "FluxTransformerBlock": (flux_block_sites, flux_block_forward),
    "WanTransformerBlock": (wan_block_sites, wan_block_forward),
    "LTXVideoTransformerBlock": (ltx_block_sites, ltx_block_forward),
    "AdaLayerNormZero": (_adaln_sites, ada_layer_norm_zero_forward),
    "AdaLayerNormZeroSingle": (_adaln_sites, ada_layer_norm_zero_single_forward),
    "AdaLayerNormContinuous": (_adaln_sites, ada_layer_norm_continuous_forward),
    "GEGLU": (lambda m: 1, geglu_forward),
}


def fused_forward(m) -> tuple | None:
    """(fused forward, sites) for a diffusers transformer block, adaLN module or GEGLU whose configuration the
    forwards above cover; None otherwise (diffusers must be imported: see `classes`)."""
    cls = classes()
    name = type(m).__name__
    if cls is None or name not in _FORWARDS or type(m) is not cls[name]:
        return None
    sites_of, forward = _FORWARDS[name]
    sites = sites_of(m)
    return (forward, sites) if sites else None


# ----------------------------------------------------------------------------------------------- attention


def _group_norm(norm, x):
    """An attention block's GroupNorm on x: [B, C, T] through `adagn` (upstream's module when it is not a plain
    affine nn.GroupNorm)."""
    if (type(norm) is nn.GroupNorm and norm.affine and x.dtype == norm.weight.dtype
            and not torch.is_autocast_enabled(x.device.type)):
        return ops.adagn(x, norm.weight, norm.bias, norm.num_groups, norm.eps, act="none")
    return norm(x)


def fused_processor(m):
    """The fused processor class for a diffusers attention module on its default processor (None otherwise):
    `AttnProcessor2_0` with q, k, v projections of one width, `JointAttnProcessor2_0`, `FluxAttnProcessor`."""
    cls = classes()
    if cls is None:
        return None
    processor = type(getattr(m, "processor", None))
    if isinstance(m, cls["Attention"]) and processor is cls["AttnProcessor2_0"]:
        lin = (m.to_q, m.to_k, m.to_v)
        if (all(isinstance(p, nn.Linear) for p in lin) and len({p.out_features for p in lin}) == 1
                and lin[0].out_features % m.heads == 0):
            return FusedAttnProcessor
    if isinstance(m, cls["Attention"]) and processor is cls["JointAttnProcessor2_0"]:
        return FusedJointAttnProcessor
    if isinstance(m, cls["FluxAttention"]) and processor is cls["FluxAttnProcessor"]:
        return FusedFluxAttnProcessor
    return None


class FusedAttnProcessor:
    """A diffusers attention processor equal to `AttnProcessor2_0` for self- and cross-attention without a mask:
    softmax(q·kᵀ/√D)·v per head through `fastdiff.ops.attention` on the [B, L, H·D] projections, the block's group
    norm through `adagn`; to_out, residual and rescale as diffusers does. Every other call goes to `original`."""

    def __init__(self, original):
        self.original = original

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args,
                 **kwargs) -> torch.Tensor:
        if (attention_mask is not None or attn.spatial_norm is not None or attn.norm_q is not None
                or attn.norm_k is not None or args or kwargs or hidden_states.dim() not in (3, 4)
                or not fused_on(hidden_states)):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        input_ndim = hidden_states.dim()
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = _group_norm(attn.group_norm, hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        hidden_states = ops.attention(query, key, value, attn.heads).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _heads_norm(norm, x, head_dim):
    """A per-head q/k norm (RMSNorm over D) applied to x: [B, L, H·D] (upstream applies it to [B, H, L, D])."""
    return x if norm is None else norm(x.unflatten(-1, (-1, head_dim))).flatten(2)


class FusedJointAttnProcessor:
    """`JointAttnProcessor2_0` (SD3's joint attention over image and text tokens) with the attention itself one
    `fastdiff.ops.attention` call on [B, L + L_text, H·D]; calls with a mask or extra arguments go to `original`."""

    def __init__(self, original):
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if attention_mask is not None or args or kwargs or not fused_on(hidden_states):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        length = hidden_states.shape[1]
        head_dim = attn.to_k.out_features // attn.heads
        query = _heads_norm(attn.norm_q, attn.to_q(hidden_states), head_dim)
        key = _heads_norm(attn.norm_k, attn.to_k(hidden_states), head_dim)
        value = attn.to_v(hidden_states)
        if encoder_hidden_states is not None:
            query = torch.cat([query, _heads_norm(attn.norm_added_q, attn.add_q_proj(encoder_hidden_states),
                                                  head_dim)], dim=1)
            key = torch.cat([key, _heads_norm(attn.norm_added_k, attn.add_k_proj(encoder_hidden_states),
                                              head_dim)], dim=1)
            value = torch.cat([value, attn.add_v_proj(encoder_hidden_states)], dim=1)
        hidden_states = ops.attention(query, key, value, attn.heads).to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :length], hidden_states[:, length:]
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        return hidden_states if encoder_hidden_states is None else (hidden_states, encoder_hidden_states)


class FusedFluxAttnProcessor:
    """`FluxAttnProcessor` with the attention one `fastdiff.ops.attention` call: projections, per-head RMS q/k
    norms, text tokens first, rotary embedding (RoPE) as upstream. Calls with a mask, or on a processor given an
    attention backend or a parallel config, go to `original`."""

    def __init__(self, original):
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if (attention_mask is not None or getattr(self.original, "_attention_backend", None) is not None
                or getattr(self.original, "_parallel_config", None) is not None or attn.fused_projections
                or not fused_on(hidden_states)):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.embeddings import apply_rotary_emb

        split = lambda t: t.unflatten(-1, (-1, attn.head_dim))  # [B, L, H, D]
        query = attn.norm_q(split(attn.to_q(hidden_states)))
        key = attn.norm_k(split(attn.to_k(hidden_states)))
        value = split(attn.to_v(hidden_states))
        if attn.added_kv_proj_dim is not None:
            query = torch.cat([attn.norm_added_q(split(attn.add_q_proj(encoder_hidden_states))), query], dim=1)
            key = torch.cat([attn.norm_added_k(split(attn.add_k_proj(encoder_hidden_states))), key], dim=1)
            value = torch.cat([split(attn.add_v_proj(encoder_hidden_states)), value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        hidden_states = ops.attention(query.flatten(2), key.flatten(2), value.flatten(2), query.shape[2])
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1)
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
            return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())
        return hidden_states
