import pytest
import torch

import fastdiff.ops as ops
from tests.ops._cases import N_CASES, affine_case, assert_close, backend_device, grad_inputs


@pytest.mark.parametrize("index", range(N_CASES))
def test_q_sample_matches_reference(backend, index):
    c = affine_case(index, backend_device(backend))
    out = ops.q_sample(c["a"], c["t"], c["b"], c["coefs"], backend=backend)
    ref = ops.q_sample(c["a"], c["t"], c["b"], c["coefs"], backend="reference")
    assert out.shape == c["a"].shape and out.dtype == c["a"].dtype
    assert_close(out, ref, c["a"].dtype, "q_sample", c["meta"])


@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_gradcheck_q_sample(name):
    if not ops.available_backends()[name].available:
        pytest.fail(f"backend {name} missing: {ops.available_backends()[name].reason}")
    a, b, coefs, t = grad_inputs("cpu")
    assert torch.autograd.gradcheck(lambda a, b: ops.q_sample(a, t, b, coefs, backend=name), (a, b))


def test_q_sample_empty(backend):
    device = backend_device(backend)
    x = torch.empty(0, 3, 4, device=device)
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 10).double().numpy(), device=device)
    out = ops.q_sample(x, torch.empty(0, dtype=torch.int64, device=device), x, coefs, backend=backend)
    assert out.shape == x.shape
