"""fastdiff's fused ops. Each op has a `reference` (plain PyTorch, the specification), `cpu`, `cuda` and
`triton` implementation with one meaning; `use_backend` / FASTDIFF_BACKEND choose, "auto" picks the fastest."""
from fastdiff.ops import _register
from fastdiff.ops.backend import (BACKENDS, BackendStatus, BackendUnavailableError, available_backends,
                                   get_backend, use_backend)
from fastdiff.ops.common import PREDICTIONS, VAR_TYPES
from fastdiff.ops.table import NCOEF, betas_for_timesteps, schedule_coefficients, step_table
from fastdiff.ops.adagn import adagn
from fastdiff.ops.adaln_modulate import adaln_modulate
from fastdiff.ops.attention import attention, attention_plan
from fastdiff.ops.ddim_step import ddim_step
from fastdiff.ops.ddpm_step import ddpm_step
from fastdiff.ops.geglu import geglu
from fastdiff.ops.posterior_mean_variance import posterior_mean_variance
from fastdiff.ops.q_sample import q_sample
from fastdiff.ops.qkv_attention import qkv_attention
from fastdiff.ops.randn_like import randn_like
from fastdiff.ops.sampler_step import sampler_step

_register.register()

__all__ = [
    "BACKENDS", "BackendStatus", "BackendUnavailableError", "available_backends", "get_backend", "use_backend",
    "PREDICTIONS", "VAR_TYPES", "NCOEF", "betas_for_timesteps", "schedule_coefficients", "step_table",
    "adagn", "adaln_modulate", "attention", "attention_plan",
    "ddim_step", "ddpm_step", "geglu", "posterior_mean_variance", "q_sample", "qkv_attention", "randn_like",
    "sampler_step",
]
