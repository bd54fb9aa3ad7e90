"""Samplers on fastdiff's fused step ops: k-diffusion-style functions and per-step generators."""
from fastdiff.samplers._loop import step_offset
from fastdiff.samplers.ddim import ddim_steps, sample_ddim
from fastdiff.samplers.ddpm import ddpm_steps, sample_ddpm
from fastdiff.samplers.generate import SAMPLER_KINDS, SamplerOptions, chunk_seed, generate, sampling_timesteps
from fastdiff.samplers.graphed import GraphCaptureError, GraphedSampler

__all__ = ["SAMPLER_KINDS", "SamplerOptions", "GraphCaptureError", "GraphedSampler", "chunk_seed", "ddim_steps", "ddpm_steps", "generate", "sample_ddim", "sample_ddpm",
           "sampling_timesteps", "step_offset"]
