"""geglu (GEGLU, Shazeer 2020): every registered backend against an fp64 oracle, forward and backward.

Tolerance (as test_adagn.py): a backend's error against the fp64 reference is at most 2x the reference's own error
in that dtype (the reference rounds twice in fp16 / bf16 where the fused kernels round once), plus a small floor.
"""
import importlib
import random

import pytest
import torch
import torch.nn.functional as F

from fastdiff import ops

geglu_mod = importlib.import_module("fastdiff.ops.geglu")
from tests.ops._cases import RUN_SEED, check_vs_oracle, TRITON_BLOCK, backend_device

FUSED = [b for b in ("cpu", "triton") if b in geglu_mod.SUPPORTED]
if "cuda" in geglu_mod.SUPPORTED:
    FUSED.append(pytest.param("cuda", marks=pytest.mark.gpu))

# F (the output width): 1, primes, a vector width, the Triton block ± 1, and past the CPU kernel's 1024-value chunk.
_WIDTHS = [1, 2, 3, 7, 8, 13, 32, 40, 97, TRITON_BLOCK - 1, TRITON_BLOCK + 1, 1500]
_LEADING = [(), (1,), (5,), (2, 3), (3, 1, 4), (2, 17)]
_LAYOUTS = ["contiguous", "row_slice", "transposed", "strided"]
N_CASES = {"cpu": 48, "triton": 12, "cuda": 48, "reference": 16}
_FLOOR = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-12}


def _dtypes(backend):
    # bf16 where the device computes it (every CPU); the interpreter runs the Triton kernels in numpy
    return (torch.float32, torch.float16, torch.bfloat16)


def _layout(x, layout, gen):
    """x's values in the given layout: row_slice = x[..., :2F] of wider rows (read in place), transposed leading
    dims (copied by the kernels), strided = every other element of the last dim (copied)."""
    if layout == "row_slice":
        wide = torch.cat([x, torch.randn(x.shape[:-1] + (3,), generator=gen).to(x)], dim=-1)
        return wide[..., : x.shape[-1]]
    if layout == "transposed" and x.dim() >= 3:
        return x.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "strided":
        return torch.stack([x, x], dim=-1)[..., 0]
    return x


def geglu_case(index: int, device: str, dtypes) -> dict:
    rng = random.Random(RUN_SEED * 37 + index)
    gen = torch.Generator().manual_seed(RUN_SEED * 37 + index)
    f = rng.choice(_WIDTHS)
    lead = rng.choice(_LEADING) if f < 1000 else rng.choice([(), (2,), (1, 3)])
    if index % 11 == 0:  # many short rows: the CPU kernel's row blocks (several per thread, gathered in fp16)
        lead, f = (300,), rng.choice([3, 40, 150])
    dtype = dtypes[index % len(dtypes)]
    layout = rng.choice(_LAYOUTS)
    scale = rng.choice([1.0, 3.0])
    x = (torch.randn(lead + (2 * f,), generator=gen) * scale).to(dtype)
    x = _layout(x, layout, gen).to(device)
    approximate = rng.choice(geglu_mod.APPROXIMATIONS)
    meta = {"index": index, "run_seed": RUN_SEED, "shape": tuple(x.shape), "dtype": str(dtype), "layout": layout,
            "contiguous": x.is_contiguous(), "approximate": approximate}
    return {"x": x, "approximate": approximate, "meta": meta, "dtype": dtype}


def _check(actual, ref, oracle, dtype, what, meta):
    check_vs_oracle(actual, ref, oracle, _FLOOR[dtype], what, meta)


def _grad(x, approximate, grad_out, backend):
    x = x.detach().requires_grad_()
    out = ops.geglu(x, approximate, backend=backend)
    return torch.autograd.grad(out, x, grad_out)[0]


def _device(backend):
    return backend_device(backend) if backend != "reference" else "cpu"


@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_geglu_matches_oracle(backend):
    device = _device(backend)
    for index in range(N_CASES[backend]):
        case = geglu_case(index, device, _dtypes(backend))
        x, appr, meta, dtype = case["x"], case["approximate"], case["meta"], case["dtype"]
        oracle = ops.geglu(x.double(), appr, backend="reference")
        ref = ops.geglu(x, appr, backend="reference")
        out = ops.geglu(x, appr, backend=backend)
        _check(out, ref, oracle, dtype, "forward", meta)
        if backend != "reference":
            assert out.is_contiguous(), meta


@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_geglu_backward_matches_oracle(backend):
    device = _device(backend)
    for index in range(N_CASES[backend] // 2):
        case = geglu_case(1000 + index, device, _dtypes(backend))
        x, appr, meta, dtype = case["x"], case["approximate"], case["meta"], case["dtype"]
        shape = x.shape[:-1] + (x.shape[-1] // 2,)
        grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(index)).to(device, dtype)
        if index % 3 == 1:  # a non-contiguous upstream gradient
            grad_out = grad_out.unsqueeze(-1).expand(shape + (2,))[..., 0]
        oracle = _grad(x.double(), appr, grad_out.double(), "reference")
        ref = _grad(x, appr, grad_out, "reference")
        got = _grad(x, appr, grad_out, backend)
        _check(got, ref, oracle, dtype, "grad x", meta)


@pytest.mark.parametrize("backend", FUSED + ["reference"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_geglu_fp64(backend, approximate):
    """fp64 computes in fp64 on every backend (libm's erf / exp, fp64 constants in the Triton kernels)."""
    device = _device(backend)
    gen = torch.Generator().manual_seed(RUN_SEED)
    x = (torch.randn(3, 5, 2 * 37, generator=gen, dtype=torch.float64) * 4).to(device)
    g = torch.randn(3, 5, 37, generator=gen, dtype=torch.float64).to(device)
    h, gate = x.chunk(2, dim=-1)
    torch.testing.assert_close(ops.geglu(x, approximate, backend=backend), h * F.gelu(gate, approximate=approximate),
                               rtol=1e-12, atol=1e-12)
    expect = geglu_mod.backward_reference(g, x, approximate)
    torch.testing.assert_close(_grad(x, approximate, g, backend), expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", FUSED + ["reference"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_geglu_gradcheck(backend, approximate):
    device = _device(backend)
    gen = torch.Generator().manual_seed(RUN_SEED)
    fast = backend == "triton"  # the interpreter runs ~1000x slower: fewer values and gradcheck's fast mode
    shape = (2, 6) if fast else (3, 2, 10)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ops.geglu(x, approximate, backend=backend), (x,), fast_mode=fast)
    # a non-contiguous view (every other value of wider rows)
    xs = (torch.randn(shape[:-1] + (2 * shape[-1],), generator=gen, dtype=torch.float64)).to(device)[..., ::2]
    assert torch.autograd.gradcheck(lambda x: ops.geglu(x, approximate, backend=backend),
                                    (xs.detach().requires_grad_(),), fast_mode=fast)


@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_geglu_empty(backend):
    device = _device(backend)
    for shape in [(0, 6), (3, 0), (2, 0, 4), (0,)]:
        x = torch.randn(shape, device=device, requires_grad=True)
        out = ops.geglu(x, backend=backend)
        assert out.shape == shape[:-1] + (shape[-1] // 2,)
        (dx,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
        assert dx is None or dx.shape == shape


def test_geglu_cpu_accuracy():
    """The CPU kernel's float erf / exp polynomials (gelu.h) over the whole gate range, against the fp64 oracle:
    error within 2·eps·(|y| + |g|) (the unit of fp32 rounding of ½g(1 + erf(g/√2)), which cancels for g < -1;
    torch's own fp32 F.gelu and its backward stay within 0.8 of it, gelu.h within 0.8), NaN propagates."""
    g = torch.cat([torch.linspace(-12, 12, 200_001), torch.logspace(-30, 1.2, 5_000), -torch.logspace(-30, 1.2, 5_000),
                   torch.tensor([0.0, -0.0, 3.925, -3.925, 0.921875, -0.921875, 87.0, -87.0, 1e30, -1e30])])
    eps = torch.finfo(torch.float32).eps
    for approximate in ("none", "tanh"):
        x = torch.stack([torch.ones_like(g), g], -1)  # h = 1: out = GELU(g), ∂g = GELU'(g)
        leaf, leaf64 = x.clone().requires_grad_(), x.double().requires_grad_()
        out = ops.geglu(leaf, approximate, backend="cpu")
        oracle = ops.geglu(leaf64, approximate, backend="reference")
        (dx,) = torch.autograd.grad(out.sum(), leaf)
        (dx64,) = torch.autograd.grad(oracle.sum(), leaf64)
        out, oracle, g64 = out.detach().double()[..., 0], oracle.detach()[..., 0], g.double()
        bad = (out - oracle).abs() > 2 * eps * (oracle.abs() + g64.abs())
        assert not bad.any(), (approximate, g[bad][:5], out[bad][:5], oracle[bad][:5])
        dg, dg64 = dx[..., 1].double(), dx64[..., 1]
        bad = (dg - dg64).abs() > 2 * eps * (dg64.abs().clamp_min(1.0) + g64.abs())
        assert not bad.any(), (approximate, g[bad][:5], dg[bad][:5], dg64[bad][:5])
        nan = ops.geglu(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), approximate, backend="cpu")
        assert torch.isnan(nan).all()


def test_geglu_matches_diffusers_module():
    """ops.geglu on the projection is diffusers' GEGLU (SD 1.5 / SDXL transformer blocks' feed-forward)."""
    activations = pytest.importorskip("diffusers.models.activations")
    torch.manual_seed(RUN_SEED)
    module = activations.GEGLU(24, 40)
    h = torch.randn(2, 9, 24)
    with torch.no_grad():
        expect = module(h)
        for backend in ["reference"] + [b for b in FUSED if isinstance(b, str) and backend_device(b) == "cpu"]:
            torch.testing.assert_close(ops.geglu(module.proj(h), backend=backend), expect)


def test_geglu_errors():
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., 2F\] with an even last dim.*\(2, 5\)"):
        ops.geglu(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., 2F\]"):
        ops.geglu(torch.tensor(1.0))
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        ops.geglu(torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ops.geglu([[1.0, 2.0]])
    with pytest.raises(ValueError, match="approximate must be one of"):
        ops.geglu(torch.randn(2, 4), approximate="sigmoid")
    with pytest.raises(ops.BackendUnavailableError, match="cuda"):
        ops.geglu(torch.randn(2, 4), backend="cuda")  # CPU tensors
    if "cpu" in FUSED:  # the C++ op checks too (RuntimeError from TORCH_CHECK), naming the argument
        with pytest.raises(RuntimeError, match="the last dim of x must be even"):
            torch.ops.fastdiff.geglu(torch.randn(2, 5), "none")
        with pytest.raises(RuntimeError, match="approximate must be 'none' or 'tanh'"):
            torch.ops.fastdiff.geglu(torch.randn(2, 4), "erf")
        with pytest.raises(RuntimeError, match="grad_out must have the output's shape"):
            torch.ops.fastdiff.geglu_backward(torch.randn(2, 3), torch.randn(2, 4), "none")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_geglu_opcheck(dtype, approximate):
    if "cpu" not in FUSED:
        pytest.skip("geglu has no C++ op in this build")
    x = torch.randn(2, 3, 10, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.fastdiff.geglu.default, (x, approximate))
    xs = torch.randn(3, 2, 12, dtype=dtype).transpose(0, 1)[..., 1:11].requires_grad_()  # non-contiguous
    torch.library.opcheck(torch.ops.fastdiff.geglu.default, (xs, approximate))
    torch.library.opcheck(torch.ops.fastdiff.geglu_backward.default,
                          (torch.randn(2, 3, 5, dtype=dtype), x.detach(), approximate))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_geglu_compile_fullgraph(backend):
    if backend not in FUSED + ["reference"]:
        pytest.skip(f"geglu has no {backend} backend")
    x = torch.randn(2, 7, 18)

    def f(x):
        return ops.geglu(x, "none", backend=backend).square().sum() + ops.geglu(x, "tanh", backend=backend).sum()

    leaf = x.clone().requires_grad_()
    torch.compile(f, backend="aot_eager", fullgraph=True)(leaf).backward()
    expect = x.clone().requires_grad_()
    f(expect).backward()
    torch.testing.assert_close(leaf.grad, expect.grad)
    with torch.no_grad():  # and without autograd
        torch.testing.assert_close(torch.compile(f, backend="aot_eager", fullgraph=True)(x), f(x))


def test_geglu_backward_reference_formula():
    """backward_reference (plain PyTorch, any device) equals autograd through the reference, in fp64."""
    gen = torch.Generator().manual_seed(RUN_SEED)
    x = torch.randn(3, 4, 22, generator=gen, dtype=torch.float64) * 3
    g = torch.randn(3, 4, 11, generator=gen, dtype=torch.float64)
    for approximate in ("none", "tanh"):
        leaf = x.clone().requires_grad_()
        (expect,) = torch.autograd.grad(geglu_mod.reference(leaf, approximate), leaf, g)
        torch.testing.assert_close(geglu_mod.backward_reference(g, x, approximate), expect, rtol=1e-12, atol=1e-12)
