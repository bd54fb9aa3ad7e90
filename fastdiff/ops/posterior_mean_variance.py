"""Posterior q(x_{t-1} | x_t, x_0) mean and variance (DDPM eqs. 6-7), fused; the mean is differentiable."""
from __future__ import annotations

import torch

from fastdiff.ops import backend as _backend
from fastdiff.ops import common as C
from fastdiff.ops import table as T


def reference(x_start, x_t, coefs, t):
    """μ̃_t = coef1 x_0 + coef2 x_t, β̃_t and clipped log β̃_t.

    x_start, x_t: [N, ...]; coefs: [T, NCOEF]; t: int64 [N].
    Returns (mean [N, ...] in x's dtype, variance [N], log_variance [N] in the accumulation dtype).
    """
    acc = C.acc_dtype(x_start.dtype)
    g = lambda col: C.gather(coefs, t, col, x_start.dim(), acc)  # noqa: E731
    mean = g(T.POST_COEF1) * x_start.to(acc) + g(T.POST_COEF2) * x_t.to(acc)
    return mean.to(x_start.dtype), coefs[t, T.POST_VAR].to(acc), coefs[t, T.POST_LOGVAR].to(acc)


def backward_coefficients(coefs, t, ndim, dtype):
    """∂μ̃/∂x_0 = coef1 and ∂μ̃/∂x_t = coef2, shaped [N, 1, ...]."""
    return C.gather(coefs, t, T.POST_COEF1, ndim, dtype), C.gather(coefs, t, T.POST_COEF2, ndim, dtype)


class _TritonPosterior(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_start, x_t, coefs, t):
        ctx.save_for_backward(coefs, t)
        return _backend.implementation("posterior_mean_variance", "triton", reference)(x_start, x_t, coefs, t)

    @staticmethod
    def backward(ctx, grad_mean, _grad_var, _grad_logvar):
        coefs, t = ctx.saved_tensors
        a, b = backward_coefficients(coefs, t, grad_mean.dim(), grad_mean.dtype)
        return grad_mean * a, grad_mean * b, None, None


def posterior_mean_variance(x_start: torch.Tensor, x_t: torch.Tensor, coefs: torch.Tensor, t,
                            backend: str | None = None):
    """(mean [N, ...], variance [N, 1, ...], log_variance_clipped [N, 1, ...]) of q(x_{t-1} | x_t, x_0) (DDPM
    eqs. 6-7) for x_start, x_t: [N, ...], coefs: [T, NCOEF] from `step_table`, t: int64 [N].

    Same values and broadcastable shapes as guided-diffusion's q_posterior_mean_variance.
    """
    if C.is_timestep(coefs):  # 0.1's order (x_start, x_t, t, coefs)
        C.warn_legacy_order("posterior_mean_variance")
        coefs, t = t, coefs
    C.check_float("x_start", x_start)
    if x_start.dim() < 1:
        raise ValueError("x_start must have a batch dimension")
    C.check_float("x_t", x_t, like=x_start)
    if x_t.shape != x_start.shape:
        raise ValueError(f"x_t must have x_start's shape {tuple(x_start.shape)}, got {tuple(x_t.shape)}")
    t = C.check_coefs_t(x_start, coefs, t)
    name = _backend.resolve("posterior_mean_variance", x_start.device, backend=backend)
    if name == "triton":
        mean, var, log_var = _TritonPosterior.apply(x_start, x_t, coefs, t)
    else:
        mean, var, log_var = _backend.implementation("posterior_mean_variance", name, reference)(
            x_start, x_t, coefs, t)
    shape = (-1,) + (1,) * (x_start.dim() - 1)
    return mean, var.reshape(shape), log_var.reshape(shape)
