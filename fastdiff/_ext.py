"""Loads the compiled extension `fastdiff._C` (op schemas, CPU and CUDA kernels) if it was built."""
import importlib

_C = None
LOAD_ERROR: str | None = None
try:
    _C = importlib.import_module("fastdiff._C")
except Exception as exc:  # ImportError, or an undefined symbol from a torch mismatch
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def has_cpu_kernels() -> bool:
    """True when fastdiff._C loaded (it always carries the CPU kernels)."""
    return _C is not None


def has_cuda_kernels() -> bool:
    """True when fastdiff._C was compiled with its CUDA kernels."""
    return _C is not None and bool(_C.cuda_built())
