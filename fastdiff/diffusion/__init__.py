"""Diffusion core with guided-diffusion's public names and semantics: schedules, GaussianDiffusion, respacing,
likelihood losses and timestep samplers, on fastdiff's fused ops and samplers."""
from fastdiff.diffusion.factory import create_gaussian_diffusion
from fastdiff.diffusion.gaussian_diffusion import GaussianDiffusion, LossType, ModelMeanType, ModelVarType
from fastdiff.diffusion.losses import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)
from fastdiff.diffusion.resample import (
    LossAwareSampler,
    LossSecondMomentResampler,
    ScheduleSampler,
    UniformSampler,
    create_named_schedule_sampler,
)
from fastdiff.diffusion.respace import SpacedDiffusion
from fastdiff.schedules import betas_for_alpha_bar, get_named_beta_schedule, space_timesteps

__all__ = [
    "GaussianDiffusion", "LossAwareSampler", "LossSecondMomentResampler", "LossType", "ModelMeanType",
    "ModelVarType", "ScheduleSampler", "SpacedDiffusion", "UniformSampler", "approx_standard_normal_cdf",
    "betas_for_alpha_bar", "create_gaussian_diffusion", "create_named_schedule_sampler", "discretized_gaussian_log_likelihood",
    "get_named_beta_schedule", "mean_flat", "normal_kl", "space_timesteps",
]
