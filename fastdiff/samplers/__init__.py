"""Samplers on fastdiff's fused step ops: k-diffusion-style functions and per-step generators."""
from fastdiff.samplers._loop import step_offset
from fastdiff.samplers.ddim import ddim_steps, sample_ddim
from fastdiff.samplers.ddpm import ddpm_steps, sample_ddpm

__all__ = ["ddim_steps", "ddpm_steps", "sample_ddim", "sample_ddpm", "step_offset"]
