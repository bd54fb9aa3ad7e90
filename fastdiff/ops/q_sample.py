"""Forward-process sample q(x_t | x_0) (DDPM eq. 4), batched per-sample coefficient gather; differentiable."""
from __future__ import annotations

import torch

from fastdiff.ops import backend as _backend
from fastdiff.ops import common as C
from fastdiff.ops import table as T


def reference(x_start, noise, coefs, t):
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε. x_start, noise: [N, ...]; coefs: [T, NCOEF]; t: int64 [N]."""
    acc = C.acc_dtype(x_start.dtype)
    g = lambda col: C.gather(coefs, t, col, x_start.dim(), acc)  # noqa: E731
    return (g(T.SQRT_AC) * x_start.to(acc) + g(T.SQRT_1M_AC) * noise.to(acc)).to(x_start.dtype)


def backward_coefficients(coefs, t, ndim, dtype):
    """∂x_t/∂x_0 = √ᾱ_t and ∂x_t/∂ε = √(1 − ᾱ_t), shaped [N, 1, ...] (shared by every fused backend)."""
    return C.gather(coefs, t, T.SQRT_AC, ndim, dtype), C.gather(coefs, t, T.SQRT_1M_AC, ndim, dtype)


class _TritonQSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_start, noise, coefs, t):
        ctx.save_for_backward(coefs, t)
        return _backend.implementation("q_sample", "triton", reference)(x_start, noise, coefs, t)

    @staticmethod
    def backward(ctx, grad):
        coefs, t = ctx.saved_tensors
        a, b = backward_coefficients(coefs, t, grad.dim(), grad.dtype)
        return grad * a, grad * b, None, None


def q_sample(x_start: torch.Tensor, noise: torch.Tensor, coefs: torch.Tensor, t, backend: str | None = None):
    """Diffuse x_start: [N, ...] with noise ε: [N, ...] to timestep t: int64 [N] (DDPM eq. 4); coefs: [T, NCOEF]
    from `step_table`."""
    if C.is_timestep(noise):  # 0.1's order (x_start, t, noise, coefs)
        C.warn_legacy_order("q_sample")
        noise, coefs, t = coefs, t, noise
    C.check_float("x_start", x_start)
    if x_start.dim() < 1:
        raise ValueError("x_start must have a batch dimension")
    C.check_float("noise", noise, like=x_start)
    if noise.shape != x_start.shape:
        raise ValueError(f"noise must have x_start's shape {tuple(x_start.shape)}, got {tuple(noise.shape)}")
    t = C.check_coefs_t(x_start, coefs, t)
    name = _backend.resolve("q_sample", x_start.device, backend=backend)
    if name == "triton":
        return _TritonQSample.apply(x_start, noise, coefs, t)
    return _backend.implementation("q_sample", name, reference)(x_start, noise, coefs, t)
