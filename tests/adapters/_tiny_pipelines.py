"""Real diffusers pipelines built from tiny local configs, for end-to-end scheduler checks on CPU.

Every builder returns `(pipe, call_kwargs)`: a genuine diffusers pipeline class (StableDiffusionPipeline,
StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline, DDIMPipeline / DDPMPipeline) whose models
are tiny (10k-80k parameters), fp32 on the CPU, with weights drawn from a fixed seed (the same weights
whatever ran before), and the keyword arguments of one call: text embeddings in place of text encoders (no
tokenizer, no download), a small image, guidance where the pipeline does classifier-free guidance (so the CFG
path runs) and an output type that includes the VAE decode. `run(pipe, call_kwargs, seed)` calls the pipeline
with a fresh CPU generator and returns the images and the last step's latents.

The configs follow the shapes of diffusers' own fast pipeline tests (`get_dummy_components`); a pipeline call
with 4-10 steps takes 10-70 ms on one CPU thread.

`SCHEDULER_BASE[name]` is the scheduler config of the model family the tiny pipeline stands for (SD / SDXL's
scaled-linear β schedule, SD3's shift 3, Flux's dynamic shifting); a test builds the stock scheduler from it
and its options and sets it as `pipe.scheduler`.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import torch

from diffusers import (
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)

WEIGHT_SEED = 0   # torch.manual_seed before each model is built
EMBED_SEED = 1    # the generator the embeddings are drawn from
BATCH = 1         # prompts per call (the CFG pipelines run 2 * BATCH rows through the denoiser)

# The scheduler config of each family (what `scheduler_config.json` of the real checkpoints holds that matters
# for the solvers). The pipeline's own default scheduler is built from it too.
SD_BASE: dict[str, Any] = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                               beta_schedule="scaled_linear", steps_offset=1)
SD3_BASE: dict[str, Any] = dict(num_train_timesteps=1000, shift=3.0)
FLUX_BASE: dict[str, Any] = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                 base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                 max_image_seq_len=4096)
PIXEL_BASE: dict[str, Any] = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                  beta_schedule="linear")
SCHEDULER_BASE: dict[str, dict[str, Any]] = {
    "sd": SD_BASE, "sdxl": SD_BASE, "sd3": SD3_BASE, "flux": FLUX_BASE,
    "ddim": PIXEL_BASE, "ddpm": PIXEL_BASE,
}


def _embeds(*shapes: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(EMBED_SEED)
    return [torch.randn(s, generator=g) for s in shapes]


def _ready(pipe):
    """The models are built in fp32 on the CPU (no `.to(dtype)`: it only adds diffusers warnings)."""
    pipe.set_progress_bar_config(disable=True)
    for name in ("unet", "transformer", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.eval()
    return pipe


def _tiny_vae_2(latent_channels: int = 4) -> AutoencoderKL:
    """Two blocks: latents at half the image size (vae_scale_factor 2)."""
    torch.manual_seed(WEIGHT_SEED)
    return AutoencoderKL(
        block_out_channels=(4, 8), in_channels=3, out_channels=3, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels, norm_num_groups=2, sample_size=16,
    )


def _tiny_vae_1(latent_channels: int) -> AutoencoderKL:
    """One block (vae_scale_factor 1), no quant convs, SD3 / Flux-style scaling and shift factors."""
    torch.manual_seed(WEIGHT_SEED)
    return AutoencoderKL(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )


def tiny_sd(steps: int = 6) -> tuple[StableDiffusionPipeline, dict[str, Any]]:
    """StableDiffusionPipeline: UNet2DConditionModel (cross-attention 16) + AutoencoderKL, 16x16 images."""
    torch.manual_seed(WEIGHT_SEED)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=2,
    )
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae_2(), text_encoder=None, tokenizer=None, unet=unet,
        scheduler=EulerDiscreteScheduler(**SD_BASE), safety_checker=None, feature_extractor=None,
        image_encoder=None, requires_safety_checker=False,
    )
    pos, neg = _embeds((BATCH, 7, 16), (BATCH, 7, 16))
    return _ready(pipe), dict(prompt_embeds=pos, negative_prompt_embeds=neg, height=16, width=16,
                              num_inference_steps=steps, guidance_scale=5.0, output_type="np")


def tiny_sdxl(steps: int = 6) -> tuple[StableDiffusionXLPipeline, dict[str, Any]]:
    """StableDiffusionXLPipeline: a "text_time" UNet2DConditionModel (micro-conditioning on sizes and crops,
    pooled text embedding) + AutoencoderKL, 16x16 images."""
    pooled_dim, time_dim = 16, 4
    torch.manual_seed(WEIGHT_SEED)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 1),
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + pooled_dim,  # 6 time ids + pooled embedding
        cross_attention_dim=24, norm_num_groups=2,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae_2(), text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
        unet=unet, scheduler=EulerDiscreteScheduler(**SD_BASE), image_encoder=None, feature_extractor=None,
        add_watermarker=False,
    )
    pos, neg, pooled, neg_pooled = _embeds((BATCH, 7, 24), (BATCH, 7, 24), (BATCH, pooled_dim),
                                           (BATCH, pooled_dim))
    return _ready(pipe), dict(prompt_embeds=pos, negative_prompt_embeds=neg, pooled_prompt_embeds=pooled,
                              negative_pooled_prompt_embeds=neg_pooled, height=16, width=16,
                              num_inference_steps=steps, guidance_scale=5.0, output_type="np")


def tiny_sd3(steps: int = 6) -> tuple[StableDiffusion3Pipeline, dict[str, Any]]:
    """StableDiffusion3Pipeline: SD3Transformer2DModel (one MM-DiT block) + AutoencoderKL, 8x8 images."""
    torch.manual_seed(WEIGHT_SEED)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=16, pooled_projection_dim=16,
        pos_embed_max_size=16,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**SD3_BASE), vae=_tiny_vae_1(4),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
        tokenizer_3=None,
    )
    pos, neg, pooled, neg_pooled = _embeds((BATCH, 7, 16), (BATCH, 7, 16), (BATCH, 16), (BATCH, 16))
    return _ready(pipe), dict(prompt_embeds=pos, negative_prompt_embeds=neg, pooled_prompt_embeds=pooled,
                              negative_pooled_prompt_embeds=neg_pooled, height=8, width=8,
                              num_inference_steps=steps, guidance_scale=5.0, output_type="np")


def tiny_flux(steps: int = 6) -> tuple[FluxPipeline, dict[str, Any]]:
    """FluxPipeline: FluxTransformer2DModel (one double- and one single-stream block, guidance embedding)
    + AutoencoderKL with one latent channel (packed 2x2 into the transformer's 4), 8x8 images. Runs the
    distilled guidance embedding and true CFG (negative embeddings, true_cfg_scale > 1)."""
    torch.manual_seed(WEIGHT_SEED)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_BASE), vae=_tiny_vae_1(1), text_encoder=None,
        tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer,
    )
    pos, neg, pooled, neg_pooled = _embeds((BATCH, 7, 16), (BATCH, 7, 16), (BATCH, 16), (BATCH, 16))
    return _ready(pipe), dict(prompt_embeds=pos, negative_prompt_embeds=neg, pooled_prompt_embeds=pooled,
                              negative_pooled_prompt_embeds=neg_pooled, height=8, width=8,
                              num_inference_steps=steps, guidance_scale=3.5, true_cfg_scale=2.0,
                              output_type="np")


def _tiny_unet2d() -> UNet2DModel:
    torch.manual_seed(WEIGHT_SEED)
    return UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(4, 8), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )


def tiny_ddim(steps: int = 10) -> tuple[DDIMPipeline, dict[str, Any]]:
    """DDIMPipeline: pixel-space UNet2DModel, 8x8 RGB images, batch 2. Its `__call__` passes `eta` to
    `scheduler.step` (DDIM only: the pipeline converts the scheduler it is built with to DDIMScheduler)."""
    pipe = DDIMPipeline(unet=_tiny_unet2d(), scheduler=DDIMScheduler(**PIXEL_BASE))
    return _ready(pipe), dict(batch_size=2, num_inference_steps=steps, eta=0.0, output_type="np")


def tiny_ddpm(steps: int = 10) -> tuple[DDPMPipeline, dict[str, Any]]:
    """DDPMPipeline on the same UNet2DModel as `tiny_ddim` (DDIMPipeline passes `eta` to `step`, which
    DDPMScheduler does not take, so DDPM runs in its own pipeline)."""
    pipe = DDPMPipeline(unet=_tiny_unet2d(), scheduler=DDPMScheduler(**PIXEL_BASE))
    return _ready(pipe), dict(batch_size=2, num_inference_steps=steps, output_type="np")


BUILDERS: dict[str, Callable[..., tuple[Any, dict[str, Any]]]] = {
    "sd": tiny_sd, "sdxl": tiny_sdxl, "sd3": tiny_sd3, "flux": tiny_flux,
    "ddim": tiny_ddim, "ddpm": tiny_ddpm,
}

# Pipelines with `callback_on_step_end` (the last step's latents are captured besides the images).
_HAS_CALLBACK = (StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline)


def run(pipe, call_kwargs: dict[str, Any], seed: int = 0) -> tuple[np.ndarray, torch.Tensor | None]:
    """One pipeline call with a fresh CPU generator seeded `seed` (and the global generator seeded `seed`).
    Returns (the images as float64 numpy, the latents after the last scheduler step, or None where the
    pipeline has no step-end callback). The call's tensors are cloned: nothing the pipeline might do to them
    in place leaks into the next call."""
    kwargs = {k: (v.clone() if isinstance(v, torch.Tensor) else copy.copy(v))
              for k, v in call_kwargs.items()}
    kwargs["generator"] = torch.Generator("cpu").manual_seed(seed)
    # SD3 / Flux do not pass the generator to `scheduler.step`: a scheduler that draws noise there (flow
    # matching's stochastic_sampling) takes it from the global generator, seeded here the same for every call.
    torch.manual_seed(seed)
    latents: list[torch.Tensor] = []
    if isinstance(pipe, _HAS_CALLBACK):
        def keep_latents(p, i, t, tensors):
            latents[:] = [tensors["latents"].detach().clone()]
            return {}
        kwargs["callback_on_step_end"] = keep_latents
        kwargs["callback_on_step_end_tensor_inputs"] = ["latents"]
    with torch.no_grad():
        out = pipe(**kwargs)
    images = np.asarray(out.images, dtype=np.float64)
    return images, (latents[0] if latents else None)
