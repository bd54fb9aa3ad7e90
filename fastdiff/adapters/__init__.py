"""Adapters to models people already have: `accelerate` / `deaccelerate` speed up a diffusers pipeline in place
(`fastdiff.adapters.acceleration`); `patch` / `unpatch` swap the GroupNorm, AdaGN and attention of
diffusers and guided-diffusion / improved-diffusion models for fastdiff's fused ops, in place and reversibly;
`FastDDPMScheduler` / `FastDDIMScheduler` (`fastdiff.adapters.diffusers`) and the σ-space `FastEulerDiscreteScheduler`,
`FastEulerAncestralDiscreteScheduler`, `FastFlowMatchEulerDiscreteScheduler`, `FastDPMSolverMultistepScheduler`,
`FastUniPCMultistepScheduler`, `FastLCMScheduler` (`fastdiff.adapters.diffusers_solvers`) are diffusers schedulers on
the fused step kernel. They are imported on first use, so `import fastdiff` works without the optional diffusers
package."""
from fastdiff.adapters.acceleration import accelerate, deaccelerate
from fastdiff.adapters.patch import FusedAttnProcessor, is_patched, patch, unpatch

_SOLVERS = ("FastEulerDiscreteScheduler", "FastEulerAncestralDiscreteScheduler", "FastFlowMatchEulerDiscreteScheduler",
            "FastDPMSolverMultistepScheduler", "FastUniPCMultistepScheduler", "FastLCMScheduler", "FAST_SCHEDULERS")
_LAZY = {"FastDDPMScheduler": "fastdiff.adapters.diffusers", "FastDDIMScheduler": "fastdiff.adapters.diffusers",
         **{name: "fastdiff.adapters.diffusers_solvers" for name in _SOLVERS}}

__all__ = ["FastDDIMScheduler", "FastDDPMScheduler", *_SOLVERS, "FusedAttnProcessor", "accelerate", "deaccelerate",
           "is_patched", "patch", "unpatch"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
