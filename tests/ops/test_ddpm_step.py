import pytest
import torch

import fastdiff.ops as ops
from tests.ops._cases import N_CASES, assert_close, backend_device, call, step_case


def _ddpm_case(index, device):
    case = step_case(index, device)
    two_c = case["model_output"].shape[1] == 2 * case["x"].shape[1]
    case["var_type"] = case["_rng"].choice(["learned", "learned_range"] if two_c else ["fixed_small", "fixed_large"])
    if case["var_type"] == "learned":
        # Learned log-variances are log σ²: keep them in a realistic range so exp() stays finite in fp16.
        mo = case["model_output"]
        c = case["x"].shape[1]
        mo = mo.clone()
        mo[:, c:] = mo[:, c:] * 0.5 - 6.0
        case["model_output"] = mo
    return case


@pytest.mark.parametrize("index", range(N_CASES))
def test_ddpm_step_matches_reference(backend, index):
    case = _ddpm_case(index, backend_device(backend))
    out = call(ops.ddpm_step, case, backend=backend)
    ref = call(ops.ddpm_step, case, backend="reference")
    if case["return_x0"]:
        assert_close(out[1], ref[1], case["x"].dtype, "x0", case["_meta"])
        out, ref = out[0], ref[0]
    assert out.dtype == case["x"].dtype and out.shape == case["x"].shape and out.is_contiguous()
    assert torch.isfinite(ref.float()).all()
    assert_close(out, ref, case["x"].dtype, "x_prev", case["_meta"])


def test_ddpm_no_noise_at_t0(backend):
    device = backend_device(backend)
    x = torch.randn(2, 3, 5, 5).to(device)
    eps = torch.randn(2, 3, 5, 5).to(device)
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 30).double().numpy(), device=device)
    t = torch.zeros(2, dtype=torch.int64, device=device)
    a = ops.ddpm_step(x, eps, coefs, t, seed=1, backend=backend)
    b = ops.ddpm_step(x, eps, coefs, t, seed=2, backend=backend)
    assert torch.equal(a, b)
    t1 = torch.ones(2, dtype=torch.int64, device=device)
    assert not torch.equal(ops.ddpm_step(x, eps, coefs, t1, seed=1, backend=backend),
                           ops.ddpm_step(x, eps, coefs, t1, seed=2, backend=backend))


def test_ddpm_step_empty(backend):
    device = backend_device(backend)
    x = torch.empty(0, 3, 4, device=device)
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 10).double().numpy(), device=device)
    out = ops.ddpm_step(x, torch.empty(0, 6, 4, device=device), coefs, torch.empty(0, dtype=torch.int64,
                        device=device), var_type="learned_range", seed=3, backend=backend)
    assert out.shape == x.shape


@pytest.mark.parametrize("name", ["reference", "cpu", "triton", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("var_type", ["fixed_small", "learned_range"])
def test_ddpm_seed_tensor_equals_int_seed(name, var_type):
    """seed as an int64 [] or [1] tensor on x's device (read by the kernel) gives the int seed's result bit for bit."""
    device = backend_device(name)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    x = torch.randn(3, 2, 5, 7, generator=gen).to(device)
    mo = torch.randn(3, 4, 5, 7, generator=gen).to(device)
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 50).double().numpy(), device=device)
    t = torch.tensor([49, 17, 0], device=device)
    seed, offset = int(torch.randint(0, 2**62, (1,))) * 2 + 1, 5 << 32
    kw = {"var_type": var_type, "offset": offset, "backend": name}
    want = ops.ddpm_step(x, mo, coefs, t, seed=seed, **kw)
    for seed_tensor in (torch.tensor(seed, device=device), torch.tensor([seed], device=device)):
        assert torch.equal(ops.ddpm_step(x, mo, coefs, t, seed=seed_tensor, **kw), want)
    other = ops.ddpm_step(x, mo, coefs, t, seed=torch.tensor(seed + 1, device=device), **kw)
    assert (other[:2] - want[:2]).abs().max() > 1e-3 and torch.equal(other[2], want[2])  # t = 0: no noise
