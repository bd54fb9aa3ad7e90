import pytest
import torch

import fastdiff.ops as ops
from tests.ops._cases import N_CASES, affine_case, assert_close, backend_device, grad_inputs


@pytest.mark.parametrize("index", range(N_CASES))
def test_q_sample_matches_reference(backend, index):
    c = affine_case(index, backend_device(backend))
    out = ops.q_sample(c["a"], c["b"], c["coefs"], c["t"], backend=backend)
    ref = ops.q_sample(c["a"], c["b"], c["coefs"], c["t"], backend="reference")
    assert out.shape == c["a"].shape and out.dtype == c["a"].dtype
    assert_close(out, ref, c["a"].dtype, "q_sample", c["meta"])


@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_gradcheck_q_sample(name):
    if not ops.available_backends()[name].available:
        pytest.fail(f"backend {name} missing: {ops.available_backends()[name].reason}")
    a, b, coefs, t = grad_inputs("cpu")
    assert torch.autograd.gradcheck(lambda a, b: ops.q_sample(a, b, coefs, t, backend=name), (a, b))


def test_q_sample_empty(backend):
    device = backend_device(backend)
    x = torch.empty(0, 3, 4, device=device)
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 10).double().numpy(), device=device)
    out = ops.q_sample(x, x, coefs, torch.empty(0, dtype=torch.int64, device=device), backend=backend)
    assert out.shape == x.shape


def test_old_argument_order_still_works_with_a_warning():
    """0.1 took t before the tensors for q_sample (x_start, t, noise, coefs) and posterior_mean_variance
    (x_start, x_t, t, coefs); both still run, with a DeprecationWarning, and give the same values."""
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 50).double().numpy())
    x, eps, t = torch.randn(3, 2, 5), torch.randn(3, 2, 5), torch.tensor([0, 17, 49])
    with pytest.warns(DeprecationWarning, match="pass the timestep t last"):
        old = ops.q_sample(x, t, eps, coefs)
    assert torch.equal(old, ops.q_sample(x, eps, coefs, t))
    with pytest.warns(DeprecationWarning, match="pass the timestep t last"):
        old = ops.posterior_mean_variance(x, eps, 5, coefs)
    for a, b in zip(old, ops.posterior_mean_variance(x, eps, coefs, 5)):
        assert torch.equal(a, b)
