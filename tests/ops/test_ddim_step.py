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


SEED_BACKENDS = ["reference", "cpu", "triton", pytest.param("cuda", marks=pytest.mark.gpu)]


def _seed_inputs(device, dtype, shape=(3, 2, 5, 7), channels=2):
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    x = torch.randn(shape, generator=gen).to(device, dtype)
    mo_shape = (shape[0], channels * shape[1]) + shape[2:]
    eps, eps_u = (torch.randn(mo_shape, generator=gen).to(device, dtype) for _ in range(2))
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 50).double().numpy(), device=device)
    return x, eps, eps_u, coefs, torch.tensor([49, 17, 3], device=device)


@pytest.mark.parametrize("name", SEED_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ddim_seed_tensor_equals_int_seed(name, dtype):
    """seed as an int64 [] or [1] tensor on x's device (read by the kernel) gives the int seed's result bit for bit."""
    device = backend_device(name)
    x, eps, eps_u, coefs, t = _seed_inputs(device, dtype)
    seed, offset = int(torch.randint(0, 2**62, (1,))) * 2 + 1, (3 << 32) + 11
    kw = {"eta": 1.0, "model_output_uncond": eps_u, "guidance_scale": 3.0, "offset": offset, "return_x0": True,
          "backend": name}
    want, x0 = ops.ddim_step(x, eps, coefs, t, seed=seed, **kw)
    for seed_tensor in (torch.tensor(seed, device=device), torch.tensor([seed], device=device)):
        got, got_x0 = ops.ddim_step(x, eps, coefs, t, seed=seed_tensor, **kw)
        assert torch.equal(got, want) and torch.equal(got_x0, x0)
    other = ops.ddim_step(x, eps, coefs, t, seed=torch.tensor(seed + 1, device=device), **kw)[0]
    assert (other.float() - want.float()).abs().max() > 1e-2  # the tensor's value keys the noise
    # η = 0 draws no noise, whatever the seed tensor
    kw["eta"] = 0.0
    assert torch.equal(ops.ddim_step(x, eps, coefs, t, seed=torch.tensor(seed, device=device), **kw)[0],
                       ops.ddim_step(x, eps, coefs, t, **kw)[0])
