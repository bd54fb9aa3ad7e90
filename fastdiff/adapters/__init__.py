"""Adapters to models people already have: `patch` / `unpatch` swap the GroupNorm, AdaGN and attention of
diffusers and guided-diffusion / improved-diffusion models for fastdiff's fused ops, in place and reversibly."""
from fastdiff.adapters.patch import FusedAttnProcessor, is_patched, patch, unpatch

__all__ = ["FusedAttnProcessor", "is_patched", "patch", "unpatch"]
