"""fastdiff: fused Triton and CUDA C++ kernels for diffusion models.

Importing fastdiff never fails because the compiled extension, CUDA or Triton is
missing: `fastdiff.ops.available_backends()` says what this install has and why
the rest is missing.
"""
from fastdiff import _deprecated, ops
from fastdiff.adapters import accelerate, deaccelerate  # fastdiff.accelerate(pipe): diffusers pipelines
from fastdiff.adapters import is_patched, patch, unpatch  # fastdiff.patch(model) / fastdiff.unpatch(model)

_deprecated.install()

__version__ = "0.2.0"
__all__ = ["ops", "accelerate", "deaccelerate", "patch", "unpatch", "is_patched", "__version__"]
