import random

import pytest
import torch

import fastdiff.ops as ops
from tests.ops._cases import N_CASES, RUN_SEED, assert_close, backend_device, rand, schedule


def _case(index, device):
    rng = random.Random(RUN_SEED * 7 + index)
    gen = torch.Generator().manual_seed(RUN_SEED * 7 + index)
    n = rng.choice([1, 2, 3, 5])
    shape = (n,) + rng.choice([(), (1,), (3,), (2, 7), (3, 5, 5), (1, 1023), (1, 1025)])
    dtype = (torch.float32, torch.float16)[index % 2]
    T = rng.choice([2, 10, 1000])
    coefs = ops.step_table(schedule(rng, T), device=device)
    t = torch.randint(0, T, (n,), generator=gen).to(device)
    noncontig = rng.random() < 0.3
    a, b = (rand(shape, dtype, device, gen, noncontig) for _ in range(2))
    return dict(a=a, b=b, coefs=coefs, t=t, meta=dict(index=index, shape=shape, dtype=str(dtype), T=T))


@pytest.mark.parametrize("index", range(N_CASES))
def test_q_sample_matches_reference(backend, index):
    c = _case(index, backend_device(backend))
    out = ops.q_sample(c["a"], c["t"], c["b"], c["coefs"], backend=backend)
    ref = ops.q_sample(c["a"], c["t"], c["b"], c["coefs"], backend="reference")
    assert out.shape == c["a"].shape and out.dtype == c["a"].dtype
    assert_close(out, ref, c["a"].dtype, "q_sample", c["meta"])


@pytest.mark.parametrize("index", range(N_CASES))
def test_posterior_mean_variance_matches_reference(backend, index):
    c = _case(index, backend_device(backend))
    out = ops.posterior_mean_variance(c["a"], c["b"], c["t"], c["coefs"], backend=backend)
    ref = ops.posterior_mean_variance(c["a"], c["b"], c["t"], c["coefs"], backend="reference")
    for o, r, what in zip(out, ref, ("mean", "variance", "log_variance")):
        assert o.shape == r.shape and o.dtype == r.dtype, what
        assert_close(o, r, o.dtype, what, c["meta"])


def _grad_inputs(device, n=3):
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 50).double().numpy(), device=device, dtype=torch.float64)
    t = torch.randint(0, 50, (n,)).to(device)
    a = torch.randn(n, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(n, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    return a, b, coefs, t


@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_gradcheck_q_sample(name):
    if not ops.available_backends()[name].available:
        pytest.fail(f"backend {name} missing: {ops.available_backends()[name].reason}")
    a, b, coefs, t = _grad_inputs("cpu")
    assert torch.autograd.gradcheck(lambda a, b: ops.q_sample(a, t, b, coefs, backend=name), (a, b))


@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_gradcheck_posterior_mean(name):
    a, b, coefs, t = _grad_inputs("cpu")
    assert torch.autograd.gradcheck(
        lambda a, b: ops.posterior_mean_variance(a, b, t, coefs, backend=name)[0], (a, b))


def test_posterior_matches_closed_form():
    """μ̃ and β̃ of DDPM eq. 7 computed independently in float64."""
    betas = torch.linspace(1e-4, 0.02, 100, dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    coefs = ops.step_table(betas.numpy(), dtype=torch.float64)
    t = torch.tensor([1, 17, 99])
    x0, xt = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    mean, var, _ = ops.posterior_mean_variance(x0, xt, t, coefs)
    k = lambda v: v[t].unsqueeze(1)  # noqa: E731
    expect = k(ab_prev.sqrt() * betas / (1 - ab)) * x0 + k((1 - betas).sqrt() * (1 - ab_prev) / (1 - ab)) * xt
    torch.testing.assert_close(mean, expect)
    torch.testing.assert_close(var, k(betas * (1 - ab_prev) / (1 - ab)))
