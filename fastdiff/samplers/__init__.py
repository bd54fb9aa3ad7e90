"""Samplers on fastdiff's one fused step (`fastdiff.ops.sampler_step`): k-diffusion-style functions for every
sampler (each a table builder in `fastdiff.samplers.tables`), DDPM/DDIM with every kind of guidance, chunked
generation and whole-loop CUDA graphs."""
from fastdiff.samplers._loop import step_offset
from fastdiff.samplers.ddim import ddim_steps, sample_ddim
from fastdiff.samplers.ddpm import ddpm_steps, sample_ddpm
from fastdiff.samplers.generate import SAMPLER_KINDS, SamplerOptions, chunk_seed, generate, sampling_timesteps
from fastdiff.samplers.graphed import GraphCaptureError, GraphedSampler
from fastdiff.samplers.solvers import (SAMPLERS, Denoiser, DiscreteVPDenoiser, run_table, sample_dpmpp_2m,
                                       sample_dpmpp_2m_sde, sample_dpmpp_2s_ancestral, sample_dpmpp_3m_sde,
                                       sample_euler, sample_euler_ancestral, sample_flow_euler, sample_heun,
                                       sample_lcm, sample_unipc)

__all__ = ["SAMPLERS", "SAMPLER_KINDS", "Denoiser", "DiscreteVPDenoiser", "SamplerOptions", "GraphCaptureError",
           "GraphedSampler", "chunk_seed", "ddim_steps", "ddpm_steps", "generate", "run_table", "sample_ddim",
           "sample_ddpm", "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_2s_ancestral",
           "sample_dpmpp_3m_sde", "sample_euler", "sample_euler_ancestral", "sample_flow_euler", "sample_heun",
           "sample_lcm", "sample_unipc", "sampling_timesteps", "step_offset"]
