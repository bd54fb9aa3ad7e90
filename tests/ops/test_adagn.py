"""adagn (AdaGN, ADM §3): every registered backend against an fp64 oracle, forward and backward.

Tolerance (DESIGN §6, norms): a backend's error against the fp64 reference is at most 2x the reference's own
error in that dtype, plus a small floor for the (near-exact) fp32 cases.
"""
import importlib
import itertools
import random

import pytest
import torch

from fastdiff import ops

adagn_mod = importlib.import_module("fastdiff.ops.adagn")
from tests.ops._cases import RUN_SEED, check_vs_oracle, backend_device

FUSED = [b for b in ("cpu", "triton") if b in adagn_mod.SUPPORTED]
if "cuda" in adagn_mod.SUPPORTED:
    FUSED.append(pytest.param("cuda", marks=pytest.mark.gpu))

_GROUPS = [(1, 1), (4, 2), (6, 3), (8, 8), (12, 4), (32, 8), (5, 1)]  # (C, G): C/G = 1 and single-group included
_SPATIAL = [(), (1, 1), (1,), (5, 7), (7,), (11, 13), (4, 4), (3, 2, 5)]  # H·W = 1 and primes
N_CASES = {"cpu": 48, "triton": 12, "cuda": 48, "reference": 16}
_FLOOR = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def adagn_case(index: int, device: str, dtypes=(torch.float32, torch.float16)) -> dict:
    rng = random.Random(RUN_SEED * 31 + index)
    gen = torch.Generator().manual_seed(RUN_SEED * 31 + index)
    n = rng.choice([1, 2, 3])
    c, g = rng.choice(_GROUPS)
    spatial = rng.choice(_SPATIAL)
    dtype = dtypes[index % len(dtypes)]
    layout = rng.choice(["contiguous", "strided", "channels_last"] if len(spatial) == 2 else ["contiguous", "strided"])
    shape = (n, c) + spatial

    def r(shp, mult=1.0, off=0.0):
        return (torch.randn(shp, generator=gen) * mult + off).to(device=device, dtype=dtype)

    x = r(shape, rng.choice([1.0, 3.0]), rng.choice([0.0, 2.0]))
    if layout == "strided":
        x = torch.cat([x, x], dim=-1)[..., ::2] if spatial else torch.stack([x, x], -1)[..., 0]
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    args = {"x": x, "weight": r((c,), 0.5, 1.0), "bias": r((c,), 0.5), "num_groups": g, "eps": rng.choice([1e-5, 1e-6, 1e-3]),
                "act": rng.choice(["silu", "none"])}
    if rng.random() < 0.7:
        args["scale"] = r((n, c), 0.5)
    if rng.random() < 0.7:
        args["shift"] = r((n, c), 0.5)
    meta = {"index": index, "run_seed": RUN_SEED, "shape": shape, "groups": g, "dtype": str(dtype), "layout": layout,
                "act": args["act"], "scale": "scale" in args, "shift": "shift" in args}
    return {"args": args, "meta": meta, "dtype": dtype}


def _double(args):
    return {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


def _check(actual, ref, oracle, dtype, what, meta):
    check_vs_oracle(actual, ref, oracle, _FLOOR[dtype], what, meta)


def _grads(args, grad_out, backend):
    args = {k: (v.detach().requires_grad_() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    out = ops.adagn(**args, backend=backend)
    names = [k for k in ("x", "weight", "bias", "scale", "shift") if k in args]
    grads = torch.autograd.grad(out, [args[k] for k in names], grad_out)
    return out, dict(zip(names, grads))


@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_adagn_matches_oracle(backend):
    device = backend_device(backend) if backend != "reference" else "cpu"
    for index in range(N_CASES[backend]):
        case = adagn_case(index, device)
        args, meta, dtype = case["args"], case["meta"], case["dtype"]
        oracle = ops.adagn(**_double(args), backend="reference")
        ref = ops.adagn(**args, backend="reference")
        out = ops.adagn(**args, backend=backend)
        _check(out, ref, oracle, dtype, "forward", meta)


@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_adagn_backward_matches_oracle(backend):
    device = backend_device(backend) if backend != "reference" else "cpu"
    for index in range(N_CASES[backend] // 2):
        case = adagn_case(1000 + index, device)
        args, meta, dtype = case["args"], case["meta"], case["dtype"]
        grad_out = torch.randn(args["x"].shape, generator=torch.Generator().manual_seed(index)).to(device, dtype)
        _, oracle = _grads(_double(args), grad_out.double(), "reference")
        _, ref = _grads(args, grad_out, "reference")
        _, got = _grads(args, grad_out, backend)
        for k in oracle:
            _check(got[k], ref[k], oracle[k], dtype, f"grad {k}", meta)


@pytest.mark.parametrize("backend", FUSED + ["reference"])
@pytest.mark.parametrize("act", ["silu", "none"])
def test_adagn_gradcheck(backend, act):
    device = backend_device(backend) if backend != "reference" else "cpu"
    gen = torch.Generator().manual_seed(RUN_SEED)
    d = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    fast = backend == "triton"  # the interpreter runs ~1000x slower: fewer values and gradcheck's fast mode
    x, w, b, s, sh = (d(2, 4, 3), d(4), d(4), d(2, 4), d(2, 4)) if fast else (d(2, 6, 3, 2), d(6), d(6), d(2, 6), d(2, 6))
    groups = 2 if fast else 3
    assert torch.autograd.gradcheck(
        lambda x, w, b, s, sh: ops.adagn(x, w, b, groups, 1e-5, s, sh, act=act, backend=backend), (x, w, b, s, sh),
        fast_mode=fast)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.adagn(x, w, b, 2, act=act, backend=backend), (x, w, b),
                                    fast_mode=fast)


@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_adagn_empty(backend):
    device = backend_device(backend) if backend != "reference" else "cpu"
    for shape in [(0, 4, 3, 3), (2, 4, 0)]:
        x = torch.randn(shape, device=device)
        w, b = torch.ones(4, device=device), torch.zeros(4, device=device)
        out = ops.adagn(x, w, b, 2, backend=backend)
        assert out.shape == x.shape


def test_adagn_matches_torch_modules():
    """act(GroupNorm(x)·(1+s)+b) with torch.nn modules: the reference is what ADM's ResBlock computes."""
    x = torch.randn(2, 8, 5, 5)
    gn = torch.nn.GroupNorm(4, 8)
    torch.nn.init.normal_(gn.weight)
    torch.nn.init.normal_(gn.bias)
    s, sh = torch.randn(2, 8), torch.randn(2, 8)
    expect = torch.nn.functional.silu(gn(x) * (1 + s[..., None, None]) + sh[..., None, None])
    torch.testing.assert_close(ops.adagn(x, gn.weight, gn.bias, 4, gn.eps, s, sh), expect)


def test_adagn_errors():
    x, w = torch.randn(2, 6, 4), torch.randn(6)
    with pytest.raises(ValueError, match="C = 6 .* not divisible by num_groups = 4"):
        ops.adagn(x, w, w, 4)
    with pytest.raises(TypeError, match="weight has dtype torch.float16"):
        ops.adagn(x, w.half(), w, 3)
    with pytest.raises(ValueError, match=r"scale must have shape \[N, C\] = \[2, 6\]"):
        ops.adagn(x, w, w, 3, scale=torch.randn(2, 6, 1))
    with pytest.raises(ValueError, match=r"shift must have shape \[N, C\] = \[2, 6\]"):
        ops.adagn(x, w, w, 3, shift=torch.randn(1, 6))
    with pytest.raises(ValueError, match=r"bias must have shape \[C\] = \[6\]"):
        ops.adagn(x, w, torch.randn(5), 3)
    with pytest.raises(ValueError, match="act must be one of"):
        ops.adagn(x, w, w, 3, act="gelu")
    with pytest.raises(ValueError, match="num_groups must be a positive int"):
        ops.adagn(x, w, w, 0)
    with pytest.raises(ops.BackendUnavailableError, match="cuda"):
        ops.adagn(x, w, w, 3, backend="cuda")  # CPU tensors (or no cuda backend for adagn)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adagn_opcheck(dtype):
    if "cpu" not in adagn_mod.SUPPORTED:
        pytest.skip("adagn has no C++ op in this build")
    x = torch.randn(2, 6, 3, 5, dtype=dtype, requires_grad=True)
    p = lambda *s: torch.randn(*s, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.fastdiff.adagn.default, (x, p(6), p(6), p(2, 6), p(2, 6), 3, 1e-5, True))
    torch.library.opcheck(torch.ops.fastdiff.adagn.default, (x, p(6), p(6), None, None, 2, 1e-5, False))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_adagn_compile_fullgraph(backend):
    if backend not in adagn_mod.SUPPORTED:
        pytest.skip(f"adagn has no {backend} backend")
    x = torch.randn(2, 8, 5, 3)
    w, b, s, sh = torch.randn(8), torch.randn(8), torch.randn(2, 8), torch.randn(2, 8)

    def f(x, w, b, s, sh):
        return ops.adagn(x, w, b, 4, 1e-5, s, sh, backend=backend).square().sum()

    leaves = [t.clone().requires_grad_() for t in (x, w, b, s, sh)]
    torch.compile(f, backend="aot_eager", fullgraph=True)(*leaves).backward()
    expect = [t.clone().requires_grad_() for t in (x, w, b, s, sh)]
    f(*expect).backward()
    for a, e in zip(leaves, expect):
        torch.testing.assert_close(a.grad, e.grad)


@pytest.mark.parametrize("act", ["silu", "none"])
def test_adagn_backward_reference_formula(act):
    """backward_reference (the CUDA fallback without Triton) equals autograd through the reference, in fp64."""
    gen = torch.Generator().manual_seed(RUN_SEED)
    d = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    x, w, b, s, sh, g = d(3, 8, 5, 3), d(8), d(8), d(3, 8), d(3, 8), d(3, 8, 5, 3)
    leaves = [t.clone().requires_grad_() for t in (x, w, b, s, sh)]
    out, mean, rstd = adagn_mod.reference(*leaves, 4, 1e-5, act == "silu")
    expect = torch.autograd.grad(out, leaves, g)
    got = adagn_mod.backward_reference(g, x, w, b, s, sh, mean, rstd, 4, act == "silu")
    for e, a in zip(expect, got):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- memory formats and the split path

_CL_SHAPES = [  # (shape, G): 4-D and 5-D, odd / prime extents, C/G = 1, one group, C above a 64-channel tile
    ((2, 12, 5, 7), 4), ((1, 6, 1, 3), 3), ((3, 5, 3, 2), 5), ((1, 70, 3, 3), 7), ((2, 6, 2, 3, 5), 3),
    ((1, 4, 4, 4), 1)]


def _memory_format(x):
    if x.is_contiguous():
        return torch.contiguous_format
    return torch.channels_last if x.dim() == 4 else torch.channels_last_3d


def _channels_last(x):
    return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)


def _args(shape, g, dtype, device, seed, affine=True):
    gen = torch.Generator().manual_seed(RUN_SEED * 7 + seed)
    r = lambda *s, mult=1.0, off=0.0: (torch.randn(s, generator=gen) * mult + off).to(device=device, dtype=dtype)
    n, c = shape[:2]
    args = {"x": _channels_last(r(*shape, mult=2.0, off=1.0)), "weight": r(c, mult=0.5, off=1.0),
            "bias": r(c, mult=0.5), "num_groups": g, "eps": 1e-5}
    if affine:
        args["scale"], args["shift"] = r(n, c, mult=0.5), r(n, c, mult=0.5)
    return args


@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_adagn_channels_last_forward_backward(backend):
    """channels_last / channels_last_3d x on every backend against the fp64 oracle, forward and backward; the fused
    backends return the output (and the C++ / Triton backward kernels dx) in x's memory format."""
    device = backend_device(backend) if backend != "reference" else "cpu"
    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if backend == "cpu" else [])
    for i, ((shape, g), dtype) in enumerate(itertools.product(_CL_SHAPES, dtypes)):
        args = _args(shape, g, dtype, device, i, affine=i % 3 != 2)
        args["act"] = ("silu", "none")[i % 2]
        x = args["x"]
        meta = {"shape": shape, "groups": g, "dtype": dtype, "act": args["act"]}
        assert not x.is_contiguous() and _memory_format(x) != torch.contiguous_format
        grad_out = _channels_last(torch.randn(shape, generator=torch.Generator().manual_seed(i)).to(device, dtype))
        out_o, oracle = _grads(_double(args), grad_out.double(), "reference")
        out_r, ref = _grads(args, grad_out, "reference")
        out, got = _grads(args, grad_out, backend)
        _check(out.detach(), out_r.detach(), out_o.detach(), dtype, "forward", meta)
        for k in oracle:
            _check(got[k], ref[k], oracle[k], dtype, f"grad {k}", meta)
        if backend != "reference":
            assert out.is_contiguous(memory_format=_memory_format(x)), (meta, out.stride())
            with torch.no_grad():
                assert ops.adagn(**args, backend=backend).stride() == x.stride(), meta


@pytest.mark.parametrize("backend", FUSED)
def test_adagn_backward_kernel_layout(backend):
    """The backward kernels take grad_out in another layout than x and return dx in x's memory format."""
    device = backend_device(backend)
    impl = (lambda *a: torch.ops.fastdiff.adagn_backward(*a)) if backend == "cpu" else \
        importlib.import_module("fastdiff.triton_kernels.adagn").adagn_backward
    for shape, g in [((2, 12, 5, 7), 4), ((2, 6, 2, 3, 5), 3)]:
        args = _args(shape, g, torch.float32, device, 5)
        x, w, b, s, sh = (args[k] for k in ("x", "weight", "bias", "scale", "shift"))
        out, mean, rstd = adagn_mod.reference(x, w, b, s, sh, g, 1e-5, True)
        grad_out = torch.randn(shape, device=device)  # contiguous, x channels-last
        expect = adagn_mod.backward_reference(grad_out.double(), x.double(), w.double(), b.double(), s.double(),
                                              sh.double(), mean.double(), rstd.double(), g, True)
        got = impl(grad_out, x, w, b, s, sh, mean, rstd, g, True)
        assert got[0].stride() == x.stride()
        for e, a in zip(expect, got):
            torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_adagn_cpu_split_path(layout):
    """Batch 1 with groups of more than CPU_SPLIT_ELEMENTS values takes the cpu backend's split-spatial reduction
    (parallel slices merged with Chan's formula); fp32 and fp16, forward and backward, against the fp64 oracle."""
    if "cpu" not in adagn_mod.SUPPORTED:
        pytest.skip("adagn has no cpu backend")
    shape, g = (1, 64, 48, 48), 32
    assert (shape[1] // g) * shape[2] * shape[3] > adagn_mod.CPU_SPLIT_ELEMENTS
    assert shape[1] * shape[2] * shape[3] > 2 * adagn_mod.CPU_CL_SLICE_ELEMENTS  # several channels-last slices
    for i, dtype in enumerate([torch.float32, torch.float16]):
        args = _args(shape, g, dtype, "cpu", 40 + i)
        args["act"] = "silu"
        if layout == "contiguous":
            args["x"] = args["x"].contiguous()
        grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(i)).to(dtype)
        out_o, oracle = _grads(_double(args), grad_out.double(), "reference")
        out_r, ref = _grads(args, grad_out, "reference")
        out, got = _grads(args, grad_out, "cpu")
        meta = {"shape": shape, "layout": layout, "dtype": dtype}
        _check(out.detach(), out_r.detach(), out_o.detach(), dtype, "forward", meta)
        for k in oracle:
            _check(got[k], ref[k], oracle[k], dtype, f"grad {k}", meta)
        assert out.stride() == args["x"].stride()
        # The statistics the kernel returns are the group's exact ones (mean, rstd in fp32).
        _, mean, rstd = torch.ops.fastdiff.adagn(args["x"], args["weight"], args["bias"], None, None, g, 1e-5, False)
        _, mean_o, rstd_o = adagn_mod.reference(args["x"].double(), args["weight"].double(), args["bias"].double(),
                                                None, None, g, 1e-5, False)
        torch.testing.assert_close(mean.double(), mean_o, rtol=0, atol=1e-5)
        torch.testing.assert_close(rstd.double(), rstd_o, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_adagn_output_memory_format(backend):
    """contiguous -> contiguous, channels_last(_3d) -> the same, any other strides -> contiguous; ambiguous strides
    (C or the spatial extent 1) count as contiguous."""
    device = backend_device(backend) if backend != "reference" else "cpu"
    w, b = torch.ones(6, device=device), torch.zeros(6, device=device)
    cases = [(torch.randn(2, 6, 4, 5, device=device), torch.contiguous_format),
             (_channels_last(torch.randn(2, 6, 4, 5, device=device)), torch.channels_last),
             (_channels_last(torch.randn(2, 6, 2, 4, 5, device=device)), torch.channels_last_3d),
             (torch.randn(2, 6, 4, 10, device=device)[..., ::2], torch.contiguous_format),
             (torch.randn(2, 4, 5, 6, device=device).permute(0, 3, 1, 2)[:, :, :, 1:], torch.contiguous_format),
             (_channels_last(torch.randn(2, 6, 1, 1, device=device)), torch.contiguous_format)]
    for x, fmt in cases:
        assert adagn_mod.memory_format(x) == fmt
        out = ops.adagn(x, w, b, 3, backend=backend)
        torch.testing.assert_close(out, ops.adagn(x.contiguous(), w, b, 3, backend="reference"), rtol=1e-5,
                                   atol=1e-5)
        if backend != "reference":
            assert out.is_contiguous(memory_format=fmt), (tuple(x.stride()), tuple(out.stride()))


@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_adagn_gradcheck_channels_last(backend):
    device = backend_device(backend) if backend != "reference" else "cpu"
    gen = torch.Generator().manual_seed(RUN_SEED + 3)
    d = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(device)
    fast = backend == "triton"
    x = _channels_last(d(2, 4, 3, 2) if fast else d(2, 6, 3, 5)).requires_grad_()
    c = x.shape[1]
    w, b, s, sh = (t.requires_grad_() for t in (d(c), d(c), d(2, c), d(2, c)))
    for act in ("silu", "none"):
        assert torch.autograd.gradcheck(
            lambda x, w, b, s, sh: ops.adagn(x, w, b, 2, 1e-5, s, sh, act=act, backend=backend), (x, w, b, s, sh),
            fast_mode=fast)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adagn_opcheck_channels_last(dtype):
    if "cpu" not in adagn_mod.SUPPORTED:
        pytest.skip("adagn has no C++ op in this build")
    p = lambda *s: torch.randn(*s, dtype=dtype, requires_grad=True)
    x = _channels_last(torch.randn(2, 6, 3, 5, dtype=dtype)).requires_grad_()
    torch.library.opcheck(torch.ops.fastdiff.adagn.default, (x, p(6), p(6), p(2, 6), p(2, 6), 3, 1e-5, True))
    x5 = _channels_last(torch.randn(1, 4, 2, 3, 3, dtype=dtype)).requires_grad_()
    torch.library.opcheck(torch.ops.fastdiff.adagn.default, (x5, p(4), p(4), None, None, 2, 1e-5, False))
    # split path ([N, C, S] groups of more than CPU_SPLIT_ELEMENTS values)
    xs = torch.randn(1, 2, 64, 65, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.fastdiff.adagn.default, (xs, p(2), p(2), p(1, 2), None, 1, 1e-5, True))


def test_adagn_compile_channels_last():
    """torch.compile(fullgraph=True) over the C++ op: the fake kernel gives the output x's memory format, so the
    compiled graph's output strides agree with eager's."""
    if "cpu" not in adagn_mod.SUPPORTED:
        pytest.skip("adagn has no cpu backend")
    x = _channels_last(torch.randn(2, 8, 5, 3))
    w, b, s, sh = torch.randn(8), torch.randn(8), torch.randn(2, 8), torch.randn(2, 8)
    f = lambda x, w, b, s, sh: ops.adagn(x, w, b, 4, 1e-5, s, sh, backend="cpu")
    out = torch.compile(f, backend="aot_eager", fullgraph=True)(x, w, b, s, sh)
    expect = f(x, w, b, s, sh)
    assert out.stride() == expect.stride() == x.stride()
    torch.testing.assert_close(out, expect)


def test_adagn_check_fast_path_rejects():
    """The one-test fast path of the argument check lets nothing through that the full check rejects."""
    x, w = torch.randn(2, 6, 4), torch.randn(6)
    with pytest.raises(TypeError, match="scale has dtype torch.float64"):
        ops.adagn(x, w, w, 3, scale=torch.randn(2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="eps must be > 0"):
        ops.adagn(x, w, w, 3, eps=0.0)
    with pytest.raises(ValueError, match="num_groups must be a positive int"):
        ops.adagn(x, w, w, True)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ops.adagn(x.numpy(), w, w, 3)
    with pytest.raises(ValueError, match=r"weight must have shape \[C\] = \[6\]"):
        ops.adagn(x, torch.randn(1, 6), w, 3)
    with pytest.raises(ValueError, match="x must be"):
        ops.adagn(torch.randn(6), w, w, 3)
    # tensors left to the C++ op's checks come back as the named Python errors
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        ops.adagn(x, w.numpy(), w, 3)
    with pytest.raises(TypeError, match="bias must be a torch.Tensor"):
        with torch.no_grad():
            ops.adagn(x, w, [1.0] * 6, 3)
    with pytest.raises(ValueError, match=r"shift must have shape \[N, C\] = \[2, 6\]"):
        ops.adagn(x, w.requires_grad_(), w, 3, shift=torch.randn(2, 3))
    # an int eps is accepted (the full check), the fast path's result equals the full one's
    torch.testing.assert_close(ops.adagn(x, w, w, 3, eps=1), ops.adagn(x, w, w, 3, eps=1.0))


def test_adagn_no_grad_fast_path_matches_autograd_path():
    """Outside autograd the C++ op is called below the autograd kernel; with grads it goes through it: same
    values, and only the latter builds a graph."""
    if "cpu" not in adagn_mod.SUPPORTED:
        pytest.skip("adagn has no cpu backend")
    x, w, b = torch.randn(2, 8, 5, 5), torch.randn(8), torch.randn(8)
    with torch.no_grad():
        a = ops.adagn(x, w, b, 4, backend="cpu")
    g = ops.adagn(x, w, b.requires_grad_(), 4, backend="cpu")
    assert a.grad_fn is None and g.grad_fn is not None
    torch.testing.assert_close(a, g.detach(), rtol=0, atol=0)
