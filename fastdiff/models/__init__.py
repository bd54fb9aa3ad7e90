"""ADM models ("Diffusion Models Beat GANs"): `UNetModel` and `EncoderUNetModel` with guided-diffusion's
constructor arguments and state-dict keys, built on `fastdiff.models.nn.adagn` / `qkv_attention`; `MLPDenoiser` for
2-D data; Discriminator Guidance's discriminators (`ClassifierFeatureDiscriminator`, `MLPDiscriminator`); SIDDM /
DDGAN image networks (`UNetGenerator`, `UNetSIDDMDiscriminator`, `UNetDDGANDiscriminator`)."""
from fastdiff.models.discriminator import ClassifierFeatureDiscriminator, MLPDiscriminator
from fastdiff.models.mlp import MLPDenoiser
from fastdiff.models.nn import GroupNorm32, adagn, normalization, qkv_attention, timestep_embedding
from fastdiff.models.siddm_unet import UNetDDGANDiscriminator, UNetGenerator, UNetSIDDMDiscriminator
from fastdiff.models.unet import (
                                  AttentionBlock,
                                  AttentionPool2d,
                                  Downsample,
                                  EncoderUNetModel,
                                  QKVAttention,
                                  QKVAttentionLegacy,
                                  ResBlock,
                                  TimestepBlock,
                                  TimestepEmbedSequential,
                                  UNetModel,
                                  Upsample,
                                  parse_attention_resolutions,
)

__all__ = [
    "AttentionBlock", "AttentionPool2d", "ClassifierFeatureDiscriminator", "Downsample", "EncoderUNetModel",
    "GroupNorm32", "MLPDenoiser", "MLPDiscriminator", "QKVAttention",
    "QKVAttentionLegacy", "ResBlock", "TimestepBlock", "TimestepEmbedSequential", "UNetDDGANDiscriminator",
    "UNetGenerator", "UNetModel", "UNetSIDDMDiscriminator", "Upsample",
    "adagn", "normalization", "parse_attention_resolutions", "qkv_attention", "timestep_embedding",
]
