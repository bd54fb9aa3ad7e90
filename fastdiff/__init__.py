"""fastdiff: fused Triton and CUDA C++ kernels for diffusion models.

Importing fastdiff never fails because the compiled extension, CUDA or Triton is
missing: `fastdiff.ops.available_backends()` says what this install has and why
the rest is missing.
"""
from fastdiff import ops
from fastdiff.patch import is_patched, patch, unpatch  # noqa: F401  (fastdiff.patch(model) / unpatch)

__version__ = "0.1.0"
__all__ = ["ops", "__version__"]
