"""Python registrations for the C++ ops of fastdiff._C: fake kernels (torch.compile) and autograd formulas."""
from __future__ import annotations

import torch

from fastdiff import _ext
from fastdiff.ops import common as C
from fastdiff.ops import adagn as _adagn
from fastdiff.ops import adaln_modulate as _adaln
from fastdiff.ops import geglu as _geglu
from fastdiff.ops import posterior_mean_variance as _pmv
from fastdiff.ops import q_sample as _qs


def _step_fake(x, return_denoised: bool):
    """sampler_step's (x_next, D): contiguous like x: [N, C, ...]; D empty [0] unless return_denoised."""
    return torch.empty_like(x, memory_format=torch.contiguous_format), (
        torch.empty_like(x, memory_format=torch.contiguous_format) if return_denoised else x.new_empty(0))


def _q_sample_setup(ctx, inputs, output):
    _, _, coefs, t = inputs
    ctx.save_for_backward(coefs, t)


def _q_sample_backward(ctx, grad):
    coefs, t = ctx.saved_tensors
    a, b = _qs.backward_coefficients(coefs, t, grad.dim(), grad.dtype)
    return grad * a, grad * b, None, None


def _posterior_backward(ctx, grad_mean, _grad_var, _grad_log_var):
    coefs, t = ctx.saved_tensors
    a, b = _pmv.backward_coefficients(coefs, t, grad_mean.dim(), grad_mean.dtype)
    return grad_mean * a, grad_mean * b, None, None


def register() -> None:
    if not _ext.has_cpu_kernels():
        return
    # sampler_step writes history in place (Tensor(a!)?) and returns new tensors.
    torch.library.register_fake("fastdiff::sampler_step")(
        lambda x, mo, mou, table, step, history, var_mode, noise, seed, offset, rd, seed_tensor=None:
        _step_fake(x, rd))
    torch.library.register_fake("fastdiff::q_sample")(
        lambda x_start, noise, coefs, t: torch.empty_like(x_start, memory_format=torch.contiguous_format))

    def _posterior_fake(x_start, x_t, coefs, t):
        acc = C.acc_dtype(x_start.dtype)
        n = x_start.shape[0]
        return (torch.empty_like(x_start, memory_format=torch.contiguous_format),
                x_start.new_empty((n,), dtype=acc), x_start.new_empty((n,), dtype=acc))

    torch.library.register_fake("fastdiff::posterior_mean_variance")(_posterior_fake)
    torch.library.register_fake("fastdiff::randn_like")(
        lambda x, seed, offset: torch.empty_like(x, memory_format=torch.contiguous_format))
    torch.library.register_autograd("fastdiff::q_sample", _q_sample_backward, setup_context=_q_sample_setup)
    torch.library.register_autograd("fastdiff::posterior_mean_variance", _posterior_backward,
                                    setup_context=_q_sample_setup)
    torch.library.register_fake("fastdiff::adagn")(_adagn.fake)
    torch.library.register_fake("fastdiff::adagn_backward")(_adagn.backward_fake)
    torch.library.register_autograd("fastdiff::adagn", _adagn.backward, setup_context=_adagn.setup_context)
    torch.library.register_fake("fastdiff::geglu")(_geglu.fake)
    torch.library.register_fake("fastdiff::geglu_backward")(_geglu.backward_fake)
    # geglu's autograd kernel is C++ (csrc/geglu_autograd.cpp): register_autograd's Python one cost more per call
    # than the op at a small model's sizes
    torch.library.register_fake("fastdiff::adaln_modulate")(_adaln.fake)
    torch.library.register_fake("fastdiff::adaln_modulate_backward")(_adaln.backward_fake)
    torch.library.register_autograd("fastdiff::adaln_modulate", _adaln.backward, setup_context=_adaln.setup_context)
