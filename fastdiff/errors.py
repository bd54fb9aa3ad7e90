"""What fastdiff raises, and the argument checks its entry points share.

Every public entry point (ops, diffusion, samplers, guidance, models' forward, Trainer, adapters, CLI) checks its
arguments before any work starts. A bad argument raises a built-in exception whose message names the argument and
the value:

- `TypeError`: the wrong kind of value (a float where an int is needed, a tensor of the wrong dtype);
- `ValueError`: a value out of its range, a shape that does not fit, a tensor on the wrong device, an option this
  machine cannot honour (e.g. a CUDA device without CUDA);
- `IndexError`: a timestep index outside its coefficient table (on a GPU, where checking would cost a host
  synchronisation, the fused kernels return NaN for it instead).

fastdiff's own types, for conditions that are not a single bad argument:

- `BackendUnavailableError`: an explicitly requested kernel backend cannot run these inputs here;
- `GraphCaptureError`: CUDA graph capture of a sampling loop failed (the message names the likely cause);
- `CorruptCheckpointError`: a checkpoint file is truncated, altered or not a checkpoint;
- `CheckpointMismatchError` (a ValueError): a valid checkpoint that does not fit what loads it;
- `TrainingDivergedError`: training produced non-finite gradients it could not skip past.

`fastdiff`'s command line turns every one of these into one line on stderr and exit status 2 (`USER_ERRORS`);
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import math
import numbers


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this op on these inputs."""


class GraphCaptureError(RuntimeError):
    """CUDA graph capture of the sampling loop failed; the message names the likely cause."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file is truncated, corrupt or not a fastdiff checkpoint."""


class CheckpointMismatchError(ValueError):
    """A valid checkpoint that does not fit what loads it: written by another run configuration (data set, model,
    diffusion), or holding another model's weights."""


class TrainingDivergedError(RuntimeError):
    """Training steps had non-finite gradients: max_skipped_steps in a row, or every step of the run."""


USER_ERRORS = (TypeError, ValueError, IndexError, OSError, BackendUnavailableError, GraphCaptureError,
               CorruptCheckpointError, TrainingDivergedError)


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as an int when it is one (bools, floats and strings are refused: a fractional count or index would
    be truncated) and lies in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        lo = "-inf" if minimum is None else minimum
        hi = "inf" if maximum is None else maximum
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {value}")
    return value


def check_whole_numbers(name: str, values) -> list[int]:
    """`values` (a sequence, array or tensor of whole numbers, e.g. timestep indices) as a list of ints. Fractional
    values and bools are refused: int() would silently truncate 10.7 to 10 and read True as 1."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") and not hasattr(values, "tolist"):
        raise TypeError(f"{name} must be a sequence of ints, got {type(values).__name__}")
    items = values.tolist() if hasattr(values, "tolist") else list(values)
    items = items if isinstance(items, list) else [items]
    out = []
    for i, v in enumerate(items):
        v = v.item() if hasattr(v, "item") else v
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v != int(v):
            raise TypeError(f"{name} must hold whole numbers, got {v!r} at position {i}")
        out.append(int(v))
    return out


def check_number(name: str, value, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
                high_open: bool = False) -> float:
    """`value` as a float when it is a finite real number (not a bool) in the interval from low to high."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if value < low or (low_open and value == low) or value > high or (high_open and value == high):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must lie in {lo}{low}, {high}{hi}, got {value}")
    return value


def state_dict_mismatch(state: dict, own: dict) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, "key: checkpoint (shape) vs model (shape)") between a loaded state dict and
    a model's own `state_dict()`: what `load_state_dict(strict=True)` would refuse, found before loading any."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, shapes


def check_device(name: str, device):
    """`device` (None, a string such as "cuda:1", or a torch.device) as a torch.device this machine has; None is
    the default device (CUDA when available)."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} must be a device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={device!r}, but CUDA is not available on this machine (torch "
                             f"{torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={device!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"{name} must be a CPU or CUDA device, got {device!r}")
    return dev
