"""Argument checks and reference building blocks shared by the fused sampler ops.

The reference math here is the specification the cpu, cuda and triton kernels follow;
each piece of math exists once (the kernels mirror it in csrc/include/fastdiff/sampler_math.h
and triton_kernels/_sampler_math.py).
"""
from __future__ import annotations

import math
import numbers
import warnings

import torch

from fastdiff.ops import table as T
from fastdiff.ops import philox

# The one vocabulary of prediction and variance types (kernel codes), with the other names they go by: diffusers'
# prediction_type / variance_type and guided-diffusion's ModelMeanType / ModelVarType member names.
PREDICTIONS = {"epsilon": 0, "x0": 1, "v": 2}
_PREDICTION_ALIASES = {"eps": "epsilon", "sample": "x0", "start_x": "x0", "v_prediction": "v"}
VAR_TYPES = {"fixed_small": 0, "fixed_large": 1, "learned": 2, "learned_range": 3}
_VAR_TYPE_ALIASES = {"fixed_small_log": "fixed_small", "fixed_large_log": "fixed_large"}
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _canonical(what: str, value, names: dict, aliases: dict) -> str:
    """The canonical name of `value` (a name, an alias, or an enum member whose .name is one), else a ValueError."""
    name = str(getattr(value, "name", value)).lower()
    name = aliases.get(name, name)
    if name not in names:
        raise ValueError(f"{what} must be one of {sorted(names)} (or {sorted(aliases)}), got {value!r}")
    return name


def prediction_name(prediction) -> str:
    """'epsilon' | 'x0' | 'v' for any of their names (diffusers' 'sample' / 'v_prediction', a ModelMeanType)."""
    return _canonical("prediction", prediction, PREDICTIONS, _PREDICTION_ALIASES)


def var_type_name(var_type) -> str:
    """'fixed_small' | 'fixed_large' | 'learned' | 'learned_range' for any of their names (diffusers'
    'fixed_small_log' / 'fixed_large_log', a ModelVarType)."""
    return _canonical("var_type", var_type, VAR_TYPES, _VAR_TYPE_ALIASES)


def prediction_code(prediction) -> int:
    """The kernel code of `prediction` (any name `prediction_name` takes)."""
    return PREDICTIONS[prediction_name(prediction)]


def var_type_code(var_type) -> int:
    """The kernel code of `var_type` (any name `var_type_name` takes)."""
    return VAR_TYPES[var_type_name(var_type)]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp32 for fp16/bf16/fp32 storage, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_float(name: str, x: torch.Tensor, like: torch.Tensor | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if like is not None:
        if x.device != like.device:
            raise ValueError(f"{name} is on {x.device} but x is on {like.device}")
        if x.dtype != like.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but x has {like.dtype}; cast explicitly")


def check_coefs_t(x: torch.Tensor, coefs: torch.Tensor, t) -> torch.Tensor:
    """Validate the coefficient table and timestep indices; returns t as an int64 [N] tensor on x's device."""
    if not isinstance(coefs, torch.Tensor) or coefs.dim() != 2 or coefs.shape[1] != T.NCOEF:
        raise ValueError(f"coefs must be a [T, {T.NCOEF}] table from fastdiff.ops.step_table, got "
                         f"{tuple(coefs.shape) if isinstance(coefs, torch.Tensor) else type(coefs).__name__}")
    return check_index_table("coefs", "t", x, coefs, t)


def check_index_table(table_name: str, index_name: str, x: torch.Tensor, table: torch.Tensor, t) -> torch.Tensor:
    """A 2-D float32/float64 table on x's device and its row indices t (an int, or int32/int64 [N] / []);
    returns t as an int64 [N] tensor on x's device."""
    if table.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{table_name} must be float32 or float64, got {table.dtype}")
    if table.device != x.device:
        raise ValueError(f"{table_name} is on {table.device} but x is on {x.device}")
    n = x.shape[0]
    if isinstance(t, bool):
        raise TypeError(f"{index_name} must be an int row index or an int32/int64 tensor, got a bool")
    if isinstance(t, int):
        t = torch.full((n,), t, dtype=torch.int64, device=x.device)
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{index_name} must be an int or an int32/int64 tensor, got "
                        f"{getattr(t, 'dtype', type(t).__name__)}")
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"{index_name} must have shape [N] = [{n}] (one row index per sample), got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{index_name} is on {t.device} but x is on {x.device}")
    # Range check only where it costs no device synchronisation (CUDA kernels assert on device), and not while
    # torch.compile traces (a data-dependent branch; the C++ CPU kernel checks at run time).
    if t.device.type == "cpu" and t.numel() and not torch.compiler.is_compiling() and (
            int(t.min()) < 0 or int(t.max()) >= table.shape[0]):
        raise IndexError(f"{index_name} must lie in [0, {table.shape[0]}) (the rows of {table_name}), got min "
                         f"{int(t.min())} max {int(t.max())}")
    return t.to(torch.int64)


def check_model_output(name: str, mo: torch.Tensor, x: torch.Tensor, allow_double: bool = True) -> None:
    """model_output: [N, C, ...] like x, or [N, 2C, ...] with learned-variance channels."""
    check_float(name, mo, like=x)
    channels = (x.shape[1], 2 * x.shape[1]) if allow_double else (x.shape[1],)
    if mo.dim() != x.dim() or mo.shape[0] != x.shape[0] or mo.shape[2:] != x.shape[2:] or mo.shape[1] not in channels:
        raise ValueError(f"{name} must have shape [N, C or 2C, ...] matching x {tuple(x.shape)}, got {tuple(mo.shape)}")


def is_timestep(v) -> bool:
    """Whether `v` is a timestep argument (an int or an integer tensor) rather than a data tensor."""
    if isinstance(v, torch.Tensor):
        return not (v.is_floating_point() or v.is_complex() or v.dtype == torch.bool)
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def warn_legacy_order(op: str) -> None:
    """The ops take (tensors..., coefs, t); 0.1's q_sample / posterior_mean_variance took t before them."""
    warnings.warn(f"fastdiff.ops.{op}: pass the timestep t last, after coefs (every op takes (tensors..., coefs, "
                  f"t)); the old order stops working in fastdiff 0.3", DeprecationWarning, stacklevel=3)


def check_eta(eta) -> float:
    """DDIM's η (Song et al. eq. 16) as a float >= 0; a number, not a tensor (that would need a host read)."""
    if isinstance(eta, (torch.Tensor, bool)) or not isinstance(eta, numbers.Real):
        raise TypeError(f"eta must be a number (a tensor would need a host read per step), got {eta!r}")
    eta = float(eta)
    if not eta >= 0.0:  # also rejects NaN
        raise ValueError(f"eta must be >= 0, got {eta}")
    return eta


def check_guidance_scale(guidance_scale, model_output_uncond) -> float:
    """The classifier-free scale s of ε_u + s·(ε_c − ε_u): a finite number, and 1 (no guidance) unless there is an
    unconditional output to combine with (a scale without one would be silently ignored)."""
    try:
        if isinstance(guidance_scale, bool):
            raise TypeError
        g = float(guidance_scale)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"guidance_scale must be a number, got {guidance_scale!r}") from None
    if not math.isfinite(g):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale!r}")
    if model_output_uncond is None and g != 1.0:
        raise ValueError(f"guidance_scale={g} needs model_output_uncond (the unconditional output it combines with); "
                         f"without it the step is unguided: leave guidance_scale at 1")
    return g


def check_seed_tensor(x: torch.Tensor, seed: torch.Tensor) -> None:
    """A device seed: an int64 tensor of shape [] or [1] on x's device. Its value (in [0, 2**63)) is read by the
    kernel, not the host, so a CUDA graph replays with whatever the tensor holds."""
    if seed.dtype != torch.int64:
        raise TypeError(f"seed must be an int or an int64 tensor of shape [] or [1], got a {seed.dtype} tensor")
    if seed.dim() > 1 or seed.numel() != 1:
        raise ValueError(f"seed must be an int or an int64 tensor of shape [] or [1], got shape {tuple(seed.shape)}")
    if seed.device != x.device:
        raise ValueError(f"seed is on {seed.device} but x is on {x.device}; a seed tensor lives on x's device")


def check_noise_args(x, noise, seed, offset, stochastic: bool, generator=None) -> tuple[int, torch.Tensor | None]:
    """Validate the noise source; returns (seed, seed_tensor), the op schema's pair: the int seed for in-kernel
    noise (-1 when a tensor, a device seed or nothing is used) and the device seed tensor (or None).

    seed may be an int or an int64 [] / [1] tensor on x's device (`check_seed_tensor`). With neither `noise`
    nor `seed` for a stochastic step, a seed is drawn from `generator` (or torch's default CPU generator) so
    results still follow torch.manual_seed and no device sync is needed.
    """
    if noise is not None and seed is not None:
        raise ValueError("pass either noise (a tensor) or seed (in-kernel Philox noise), not both")
    if noise is not None:
        check_float("noise", noise, like=x)
        if noise.shape != x.shape:
            raise ValueError(f"noise must have x's shape {tuple(x.shape)}, got {tuple(noise.shape)}")
        return -1, None
    if isinstance(seed, torch.Tensor):
        check_seed_tensor(x, seed)
        philox.check_seed_offset(0, offset)
        return -1, seed
    if seed is None:
        if not stochastic:
            return -1, None
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    philox.check_seed_offset(seed, offset)
    return seed, None


def check_x(x: torch.Tensor) -> None:
    check_float("x", x)
    if x.dim() < 2:
        raise ValueError(f"x must be [N, C, ...] with at least 2 dims, got shape {tuple(x.shape)}")


# ----------------------------------------------------------------------------- reference math


def gather(coefs: torch.Tensor, t: torch.Tensor, col: int, ndim: int, dtype: torch.dtype) -> torch.Tensor:
    """coefs[t, col] as [N, 1, ..., 1] (ndim dims) in `dtype`: guided-diffusion's _extract_into_tensor."""
    return coefs[t, col].to(dtype).reshape(-1, *([1] * (ndim - 1)))


def guided_output(model_output, model_output_uncond, guidance_scale: float, channels: int, dtype):
    """First `channels` channels of the model output, with classifier-free guidance
    ε = ε_u + s·(ε_c − ε_u) (Ho & Salimans eq. 6 with s = 1 + w) when an unconditional output is given."""
    out = model_output[:, :channels].to(dtype)
    if model_output_uncond is not None:
        unc = model_output_uncond[:, :channels].to(dtype)
        out = unc + guidance_scale * (out - unc)
    return out


def predict_x0(prediction: int, x, out, coefs, t, dtype):
    """x̂0 from the model output: ε (DDPM eq. 15 inverted), x0 itself, or v (Salimans & Ho: x0 = √ᾱ x − √(1−ᾱ) v)."""
    g = lambda col: gather(coefs, t, col, x.dim(), dtype)  # noqa: E731
    if prediction == 0:
        return g(T.SQRT_RECIP_AC) * x - g(T.SQRT_RECIPM1_AC) * out
    if prediction == 1:
        return out
    return g(T.SQRT_AC) * x - g(T.SQRT_1M_AC) * out


def step_noise(x, noise, seed: int, offset: int, dtype, seed_tensor=None):
    """The step's standard normal noise: the caller's tensor, or Philox(seed, offset + flat index) with the seed
    an int (>= 0) or the device tensor `seed_tensor` ([] or [1] int64), or None for no noise term."""
    if noise is not None:
        return noise.to(dtype)
    if seed_tensor is not None:
        return philox.randn(x.shape, seed_tensor, offset, device=x.device).to(dtype)
    if seed >= 0:
        return philox.randn(x.shape, seed, offset, device=x.device).to(dtype)
    return None
