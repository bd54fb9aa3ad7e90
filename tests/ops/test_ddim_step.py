import pytest
import torch

import fastdiff.ops as ops
from tests.ops._cases import N_CASES, assert_close, backend_device, call, step_case


def _ddim_case(index, device):
    case = step_case(index, device)
    case["eta"] = case["_rng"].choice([0.0, 0.5, 1.0])
    return case


@pytest.mark.parametrize("index", range(N_CASES))
def test_ddim_step_matches_reference(backend, index):
    case = _ddim_case(index, backend_device(backend))
    out = call(ops.ddim_step, case, backend=backend)
    ref = call(ops.ddim_step, case, backend="reference")
    if case["return_x0"]:
        assert_close(out[1], ref[1], case["x"].dtype, "x0", case["_meta"])
        out, ref = out[0], ref[0]
    assert out.dtype == case["x"].dtype and out.shape == case["x"].shape and out.is_contiguous()
    assert torch.isfinite(ref.float()).all()
    assert_close(out, ref, case["x"].dtype, "x_prev", case["_meta"])


def test_ddim_step_empty(backend):
    device = backend_device(backend)
    x = torch.empty(0, 3, 4, 4, device=device)
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 10).double().numpy(), device=device)
    t = torch.empty(0, dtype=torch.int64, device=device)
    out, x0 = ops.ddim_step(x, x, coefs, t, eta=1.0, seed=1, return_x0=True, backend=backend)
    assert out.shape == x.shape and x0.shape == x.shape


def test_ddim_eta_zero_is_deterministic_and_ignores_noise(backend):
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 5, generator=gen).to(device)
    eps = torch.randn(3, 2, 5, 5, generator=gen).to(device)
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 100).double().numpy(), device=device)
    t = torch.tensor([99, 50, 1], device=device)
    a = ops.ddim_step(x, eps, coefs, t, eta=0.0, noise=torch.randn_like(x), backend=backend)
    b = ops.ddim_step(x, eps, coefs, t, eta=0.0, backend=backend)
    assert torch.equal(a, b)


def test_ddim_final_step_returns_x0(backend):
    """At t = 0, ᾱ_prev = 1 and σ = 0: x_{-1} is exactly the (clipped) x̂0, whatever the noise."""
    device = backend_device(backend)
    x = torch.randn(4, 3, 6, 6).to(device)
    eps = torch.randn(4, 3, 6, 6).to(device)
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 20).double().numpy(), device=device)
    t = torch.zeros(4, dtype=torch.int64, device=device)
    out, x0 = ops.ddim_step(x, eps, coefs, t, eta=1.0, seed=7, clip_denoised=True, return_x0=True,
                            backend=backend)
    torch.testing.assert_close(out, x0, atol=1e-6, rtol=1e-6)
    assert x0.abs().max() <= 1.0
