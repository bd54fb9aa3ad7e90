import pytest
import torch

import fastdiff.ops as ops
from tests.ops._cases import N_CASES, affine_case, assert_close, backend_device, grad_inputs


@pytest.mark.parametrize("index", range(N_CASES))
def test_posterior_mean_variance_matches_reference(backend, index):
    c = affine_case(index, backend_device(backend))
    out = ops.posterior_mean_variance(c["a"], c["b"], c["coefs"], c["t"], backend=backend)
    ref = ops.posterior_mean_variance(c["a"], c["b"], c["coefs"], c["t"], backend="reference")
    for o, r, what in zip(out, ref, ("mean", "variance", "log_variance")):
        assert o.shape == r.shape and o.dtype == r.dtype, what
        assert_close(o, r, o.dtype, what, c["meta"])


@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_gradcheck_posterior_mean(name):
    a, b, coefs, t = grad_inputs("cpu")
    assert torch.autograd.gradcheck(
        lambda a, b: ops.posterior_mean_variance(a, b, coefs, t, backend=name)[0], (a, b))


def test_posterior_matches_closed_form():
    """μ̃ and β̃ of DDPM eq. 7 computed independently in float64."""
    betas = torch.linspace(1e-4, 0.02, 100, dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    coefs = ops.step_table(betas.numpy(), dtype=torch.float64)
    t = torch.tensor([1, 17, 99])
    x0, xt = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    mean, var, _ = ops.posterior_mean_variance(x0, xt, coefs, t)
    k = lambda v: v[t].unsqueeze(1)  # noqa: E731
    expect = k(ab_prev.sqrt() * betas / (1 - ab)) * x0 + k((1 - betas).sqrt() * (1 - ab_prev) / (1 - ab)) * xt
    torch.testing.assert_close(mean, expect)
    torch.testing.assert_close(var, k(betas * (1 - ab_prev) / (1 - ab)))


def test_posterior_empty(backend):
    device = backend_device(backend)
    x = torch.empty(0, 3, 4, device=device)
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 10).double().numpy(), device=device)
    mean, var, log_var = ops.posterior_mean_variance(x, x, coefs, torch.empty(0, dtype=torch.int64, device=device),
                                                     backend=backend)
    assert mean.shape == x.shape and var.shape == (0, 1, 1) and log_var.shape == (0, 1, 1)
