"""Backend registry: one op name, four implementations (README, Backends).

`use_backend(name)` works as a setter and as a context manager; the environment
variable FASTDIFF_BACKEND sets the initial choice. "auto" picks, per call and per
device, the fastest backend that is available and supports the inputs. An explicitly
requested backend that cannot run raises `BackendUnavailableError`; it never falls back.
"""
from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

import torch

from fastdiff import _ext
from fastdiff.errors import BackendUnavailableError

BACKENDS = ("reference", "cpu", "cuda", "triton")
_CHOICES = ("auto",) + BACKENDS


class BackendStatus(NamedTuple):
    available: bool
    reason: str


def _check_name(name: str) -> str:
    if name not in _CHOICES:
        raise ValueError(f"backend must be one of {_CHOICES}, got {name!r}")
    return name


_state = {"backend": _check_name(os.environ.get("FASTDIFF_BACKEND", "auto") or "auto")}


def get_backend() -> str:
    """The backend currently requested ("auto" unless set)."""
    return _state["backend"]


class use_backend:
    """Select the backend for fastdiff ops: `use_backend("cpu")` sets it; `with use_backend("triton"):` scopes it."""

    def __init__(self, name: str):
        self._previous = _state["backend"]
        _state["backend"] = _check_name(name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _state["backend"] = self._previous
        return False


def triton_interpret() -> bool:
    """True when Triton kernels run in the interpreter on CPU tensors (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_status() -> BackendStatus:
    if importlib.util.find_spec("triton") is None:
        return BackendStatus(False, "the triton package is not installed")
    if torch.cuda.is_available():
        return BackendStatus(True, "CUDA tensors")
    if triton_interpret():
        return BackendStatus(True, "CPU tensors through the interpreter (TRITON_INTERPRET=1)")
    return BackendStatus(False, "no CUDA device, and TRITON_INTERPRET=1 is not set for the interpreter")


def available_backends() -> dict[str, BackendStatus]:
    """What this install has, and why the rest is missing: {name: BackendStatus(available, reason)}."""
    return dict(_STATUS)


def _status_table() -> dict[str, BackendStatus]:
    cpu = BackendStatus(True, "fastdiff._C CPU kernels") if _ext.has_cpu_kernels() else BackendStatus(
        False, f"fastdiff._C did not load ({_ext.LOAD_ERROR})")
    if not _ext.has_cpu_kernels():
        cuda = BackendStatus(False, f"fastdiff._C did not load ({_ext.LOAD_ERROR})")
    elif not _ext.has_cuda_kernels():
        cuda = BackendStatus(False, "fastdiff._C was built without CUDA kernels (CPU torch or no CUDA toolkit; "
                                    "rebuild with FASTDIFF_BUILD_CUDA=1 on a CUDA machine)")
    elif not torch.cuda.is_available():
        cuda = BackendStatus(False, "built with CUDA kernels but no CUDA device is visible")
    else:
        cuda = BackendStatus(True, "fastdiff._C CUDA kernels")
    return {"reference": BackendStatus(True, "plain PyTorch, any device"), "cpu": cpu, "cuda": cuda,
            "triton": _triton_status()}


def _runs_on(name: str, device: torch.device) -> tuple[bool, str]:
    status = _STATUS[name]
    if not status.available:
        return False, status.reason
    if name == "cpu" and device.type != "cpu":
        return False, f"the cpu backend takes CPU tensors, got {device}"
    if name == "cuda" and device.type != "cuda":
        return False, f"the cuda backend takes CUDA tensors, got {device}"
    if name == "triton" and device.type != "cuda" and not (device.type == "cpu" and triton_interpret()):
        return False, f"the triton backend takes CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device}"
    return True, ""


# Computed once at import: it is consulted on every op call (also while torch.compile traces, which must not
# call into the extension module), and neither the build nor TRITON_INTERPRET changes within a process.
_STATUS = _status_table()

_AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


def resolve(op: str, device: torch.device, supported=BACKENDS, backend: str | None = None) -> str:
    """The backend that runs `op` on `device`: the requested one, or for "auto" the fastest that can."""
    name = _check_name(backend) if backend is not None else _state["backend"]
    if name == "auto":
        for candidate in _AUTO_ORDER.get(device.type, ("reference",)):
            if candidate in supported and _runs_on(candidate, device)[0]:
                return candidate
        return "reference"
    if name not in supported:
        raise BackendUnavailableError(f"fastdiff op {op!r} has no {name!r} backend (it has {tuple(supported)})")
    ok, why = _runs_on(name, device)
    if not ok:
        raise BackendUnavailableError(f"backend {name!r} was requested for op {op!r} but cannot run: {why}")
    return name


def implementation(op: str, backend: str, reference):
    """The callable for `op` on `backend`; every backend takes the op schema's positional arguments."""
    if backend == "reference":
        return reference
    if backend in ("cpu", "cuda"):
        return getattr(torch.ops.fastdiff, op)  # the dispatcher routes CPU/CUDA by device
    module = importlib.import_module(f"fastdiff.triton_kernels.{op}")
    return getattr(module, op)
