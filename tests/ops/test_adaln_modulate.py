"""adaln_modulate (DiT adaLN modulate, §3.2): every registered backend against an fp64 oracle, forward and backward.

Tolerance as for adagn (DESIGN §6, norms): a backend's error against the fp64 reference is at most 2x the
reference's own error in that dtype, plus a small floor.
"""
import importlib
import random

import pytest
import torch
import torch.nn.functional as F

from fastdiff import ops
from tests.ops._cases import RUN_SEED, check_vs_oracle, backend_device

mod = importlib.import_module("fastdiff.ops.adaln_modulate")

FUSED = [b for b in ("cpu", "triton") if b in mod.SUPPORTED]
if "cuda" in mod.SUPPORTED:
    FUSED.append(pytest.param("cuda", marks=pytest.mark.gpu))

_D = [1, 2, 7, 16, 37, 64, 131]  # size 1, primes, powers of two
_L = [1, 3, 5, 13]
N_CASES = {"cpu": 64, "triton": 14, "cuda": 64, "reference": 16}
_FLOOR = {torch.float32: 4e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
_ARGS = ("x", "scale", "shift", "weight", "bias", "residual", "gate")


def _dtypes(device):
    return (torch.float32, torch.float16, torch.bfloat16) if device == "cpu" else (torch.float32, torch.float16)


def adaln_case(index: int, device: str, dtypes=None) -> dict:
    rng = random.Random(RUN_SEED * 37 + index)
    gen = torch.Generator().manual_seed(RUN_SEED * 37 + index)
    dtypes = dtypes or _dtypes(device)
    b, l, d = rng.choice([1, 2, 3]), rng.choice(_L), rng.choice(_D)
    dtype = dtypes[index % len(dtypes)]
    norm = rng.choice(["layer", "rms"])
    layout = rng.choice(["contiguous", "token_strided", "last_strided", "transposed"])

    def r(shape, mult=1.0, off=0.0):
        return (torch.randn(shape, generator=gen) * mult + off).to(device=device, dtype=dtype)

    def big(shape, mult=1.0, off=0.0):
        """A [B, L, D] tensor in `layout` (non-contiguous in all but the first)."""
        bb, ll, dd = shape
        if layout == "token_strided":  # rows of a longer sequence, read in place
            return r((bb, 2 * ll, dd), mult, off)[:, ::2]
        if layout == "last_strided":  # a last dimension that is not unit-stride (copied)
            return r((bb, ll, 2 * dd), mult, off)[..., ::2]
        if layout == "transposed":
            return r((ll, bb, dd), mult, off).transpose(0, 1)
        return r(shape, mult, off)

    def param(mult, off=0.0):
        kind = rng.choice(["sample", "sample3", "token"])
        shape = {"sample": (b, d), "sample3": (b, 1, d), "token": (b, l, d)}[kind]
        return (big(shape, mult, off) if kind == "token" else r(shape, mult, off)), kind

    args = {"x": big((b, l, d), rng.choice([1.0, 3.0]), rng.choice([0.0, 2.0])), "norm": norm,
            "eps": rng.choice([1e-6, 1e-5, 1e-3])}
    kinds = {}
    if rng.random() < 0.8:
        args["scale"], kinds["scale"] = param(0.5)
    if rng.random() < 0.8:
        args["shift"], kinds["shift"] = param(0.5)
    if rng.random() < 0.5:
        args["weight"] = r((d,), 0.5, 1.0)
    if norm == "layer" and rng.random() < 0.5:
        args["bias"] = r((d,), 0.5)
    if rng.random() < 0.5:
        args["residual"] = big((b, l, d), 2.0)
        args["gate"], kinds["gate"] = param(1.0)
    meta = {"index": index, "run_seed": RUN_SEED, "shape": (b, l, d), "dtype": str(dtype), "layout": layout,
            "norm": norm, "kinds": kinds, "args": sorted(k for k in args if k in _ARGS)}
    return {"args": args, "meta": meta, "dtype": dtype}


def _double(args):
    return {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


def _outs(result):
    return result if isinstance(result, tuple) else (result,)


def _check(actual, ref, oracle, dtype, what, meta):
    check_vs_oracle(actual, ref, oracle, _FLOOR[dtype], what, meta)


def _grads(args, grad_outs, backend):
    args = {k: (v.detach().requires_grad_() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    outs = _outs(ops.adaln_modulate(**args, backend=backend))
    names = [k for k in _ARGS if k in args]
    grads = torch.autograd.grad(outs, [args[k] for k in names], grad_outs)
    return outs, dict(zip(names, grads))


def _device(backend):
    return backend_device(backend) if backend != "reference" else "cpu"


@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_adaln_matches_oracle(backend):
    device = _device(backend)
    for index in range(N_CASES[backend]):
        case = adaln_case(index, device)
        args, meta, dtype = case["args"], case["meta"], case["dtype"]
        oracle = _outs(ops.adaln_modulate(**_double(args), backend="reference"))
        ref = _outs(ops.adaln_modulate(**args, backend="reference"))
        got = _outs(ops.adaln_modulate(**args, backend=backend))
        assert len(got) == (2 if "gate" in args else 1)
        for what, a, r_, o in zip(("h", "out") if len(got) == 2 else ("out",), got, ref, oracle):
            _check(a, r_, o, dtype, what, meta)


@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_adaln_backward_matches_oracle(backend):
    device = _device(backend)
    for index in range(N_CASES[backend] // 2):
        case = adaln_case(1000 + index, device)
        args, meta, dtype = case["args"], case["meta"], case["dtype"]
        gen = torch.Generator().manual_seed(index)
        shape = args["x"].shape
        grad_outs = [torch.randn(shape, generator=gen).to(device, dtype) for _ in range(2 if "gate" in args else 1)]
        _, oracle = _grads(_double(args), [g.double() for g in grad_outs], "reference")
        _, ref = _grads(args, grad_outs, "reference")
        _, got = _grads(args, grad_outs, backend)
        assert got.keys() == oracle.keys()
        for k in oracle:
            _check(got[k], ref[k], oracle[k], dtype, f"grad {k}", meta)


def _gradcheck_inputs(device, gated, per_token, d=5):
    gen = torch.Generator().manual_seed(RUN_SEED)
    t = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    b, l = 2, 3
    p = (b, l, d) if per_token else (b, d)
    inputs = {"x": t(b, l, d), "scale": t(*p), "shift": t(*p), "weight": t(d)}
    if gated:
        inputs.update(residual=t(b, l, d), gate=t(b, 1, d) if not per_token else t(b, l, d))
    return inputs


@pytest.mark.parametrize("backend", FUSED + ["reference"])
@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("gated,per_token", [(False, False), (True, True)])
def test_adaln_gradcheck(backend, norm, gated, per_token):
    device = _device(backend)
    inputs = _gradcheck_inputs(device, gated, per_token)
    if norm == "layer":
        inputs["bias"] = torch.randn(5, dtype=torch.float64, device=device).requires_grad_()
    names = list(inputs)

    def f(*vals):
        kw = dict(zip(names, vals))
        return ops.adaln_modulate(kw.pop("x"), norm=norm, eps=1e-5, backend=backend, **kw)

    assert torch.autograd.gradcheck(f, tuple(inputs.values()), fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_adaln_empty(backend):
    device = _device(backend)
    for shape in [(0, 4, 8), (2, 0, 8), (2, 3, 0)]:
        b, l, d = shape
        x = torch.randn(shape, device=device, requires_grad=True)
        s = torch.randn(b, d, device=device, requires_grad=True)
        r = torch.randn(shape, device=device, requires_grad=True)
        h, out = ops.adaln_modulate(x, s, s, residual=r, gate=s, backend=backend)
        assert out.shape == shape and h.shape == shape
        (out.sum() + h.sum()).backward()
        assert x.grad.shape == shape and s.grad.shape == (b, d) and r.grad.shape == shape
        assert ops.adaln_modulate(x.detach(), backend=backend).shape == shape


def test_adaln_matches_diffusers_modules():
    """The diffusers sequences the op replaces: AdaLayerNormZero's `norm(x)·(1 + scale[:, None]) + shift[:, None]`
    with LayerNorm(elementwise_affine=False, eps=1e-6), the gated residual of DiT/SD3/Flux blocks before it, and an
    RMSNorm with weight."""
    gen = torch.Generator().manual_seed(RUN_SEED)
    x, res = torch.randn(2, 9, 24, generator=gen), torch.randn(2, 9, 24, generator=gen)
    scale, shift, gate = (torch.randn(2, 24, generator=gen) for _ in range(3))
    ln = torch.nn.LayerNorm(24, elementwise_affine=False, eps=1e-6)
    torch.testing.assert_close(ops.adaln_modulate(x, scale, shift),
                               ln(x) * (1 + scale[:, None]) + shift[:, None])
    h_expect = res + gate.unsqueeze(1) * x
    h, out = ops.adaln_modulate(x, scale, shift, residual=res, gate=gate)
    torch.testing.assert_close(h, h_expect)
    torch.testing.assert_close(out, ln(h_expect) * (1 + scale[:, None]) + shift[:, None])
    rms = torch.nn.RMSNorm(24, eps=1e-6)
    torch.nn.init.normal_(rms.weight)
    torch.testing.assert_close(ops.adaln_modulate(x, scale, shift, rms.weight, norm="rms"),
                               rms(x) * (1 + scale[:, None]) + shift[:, None])
    lnw = torch.nn.LayerNorm(24, eps=1e-6)
    torch.nn.init.normal_(lnw.weight)
    torch.nn.init.normal_(lnw.bias)
    torch.testing.assert_close(ops.adaln_modulate(x, scale[:, None], None, lnw.weight, lnw.bias), lnw(x) * (1 + scale[:, None]))
    torch.testing.assert_close(ops.adaln_modulate(x, None, shift[:, None].expand(2, 9, 24).contiguous()),
                               ln(x) + shift[:, None])


@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_adaln_residual_without_gate(backend):
    """residual alone is the plain pre-norm residual (gate 1): h = residual + x, and gradients reach both."""
    g = torch.Generator().manual_seed(5)
    x, r = (torch.randn(2, 5, 24, generator=g, requires_grad=True) for _ in range(2))
    s, w, b = torch.randn(2, 24, generator=g), torch.randn(24, generator=g), torch.randn(24, generator=g)
    h, out = ops.adaln_modulate(x, s, None, w, b, residual=r, backend=backend)
    ref_h = r + x
    ref = F.layer_norm(ref_h, (24,), w, b, 1e-6) * (1 + s[:, None])
    torch.testing.assert_close(h, ref_h)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad((out.square().sum() + h.sum()), (x, r))
    expected = torch.autograd.grad((ref.square().sum() + ref_h.sum()), (x, r))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_adaln_errors():
    x, s, w = torch.randn(2, 3, 8), torch.randn(2, 8), torch.randn(8)
    with pytest.raises(ValueError, match=r"x must be \[B, L, D\]"):
        ops.adaln_modulate(torch.randn(2, 8), s)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ops.adaln_modulate([1.0], s)
    with pytest.raises(TypeError, match="scale has dtype torch.float16"):
        ops.adaln_modulate(x, s.half())
    with pytest.raises(TypeError, match="shift must be a torch.Tensor"):
        ops.adaln_modulate(x, s, 1.0)
    with pytest.raises(ValueError, match=r"scale must have shape \[B, D\], \[B, 1, D\] or \[B, L, D\]"):
        ops.adaln_modulate(x, torch.randn(2, 2, 8))
    with pytest.raises(ValueError, match=r"shift must have shape"):
        ops.adaln_modulate(x, s, torch.randn(1, 8))
    with pytest.raises(ValueError, match=r"weight must have shape \[D\] = \[8\]"):
        ops.adaln_modulate(x, s, s, torch.randn(7))
    with pytest.raises(TypeError, match="bias has dtype torch.float64"):
        ops.adaln_modulate(x, s, s, w, w.double())
    with pytest.raises(ValueError, match='bias must be None with norm="rms"'):
        ops.adaln_modulate(x, s, s, w, w, norm="rms")
    with pytest.raises(ValueError, match="norm must be one of"):
        ops.adaln_modulate(x, s, norm="group")
    with pytest.raises(ValueError, match="eps must be > 0"):
        ops.adaln_modulate(x, s, eps=0.0)
    with pytest.raises(ValueError, match="residual must be given too"):
        ops.adaln_modulate(x, s, gate=s)
    with pytest.raises(ValueError, match=r"residual must have x's shape"):
        ops.adaln_modulate(x, s, residual=x[:, :2], gate=s)
    with pytest.raises(ValueError, match=r"gate must have shape"):
        ops.adaln_modulate(x, s, residual=x, gate=w)
    with pytest.raises(ValueError, match="residual is on meta but x is on cpu"):
        ops.adaln_modulate(x, s, residual=torch.empty(2, 3, 8, device="meta"), gate=s)
    with pytest.raises(ops.BackendUnavailableError, match="cuda"):
        ops.adaln_modulate(x, s, backend="cuda")  # CPU tensors


def _opcheck_args(dtype, gated, per_token):
    x = torch.randn(2, 5, 6, dtype=dtype, requires_grad=True)
    p = lambda *s: torch.randn(*s, dtype=dtype, requires_grad=True)
    ps = (2, 5, 6) if per_token else (2, 6)
    res, gate = (p(2, 5, 6), p(2, 1, 6)) if gated else (None, None)
    return x, p(*ps), p(*ps), p(6), p(6), res, gate


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gated,per_token", [(False, False), (True, True), (True, False)])
def test_adaln_opcheck(dtype, gated, per_token):
    x, s, sh, w, b, res, gate = _opcheck_args(dtype, gated, per_token)
    op = torch.ops.fastdiff.adaln_modulate.default
    torch.library.opcheck(op, (x, s, sh, w, b, res, gate, False, 1e-5))
    torch.library.opcheck(op, (x, None, sh, w, None, res, gate, True, 1e-6))
    torch.library.opcheck(op, (x, s, None, None, None, None, None, False, 1e-6))
    with torch.no_grad():
        out, h, mean, rstd = op(x, s, sh, w, b, res, gate, False, 1e-5)
    hn = h if gated else x
    args = (torch.randn_like(out), torch.randn_like(out) if gated else None, hn.detach(),
            x.detach() if gated else None, gate, s, sh, w, b, mean, rstd, False)
    torch.library.opcheck(torch.ops.fastdiff.adaln_modulate_backward.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_adaln_compile_fullgraph(backend):
    gen = torch.Generator().manual_seed(RUN_SEED)
    vals = [torch.randn(s, generator=gen) for s in ((2, 5, 8), (2, 8), (2, 1, 8), (8,), (2, 5, 8), (2, 8))]

    def f(x, s, sh, w, r, g):
        h, out = ops.adaln_modulate(x, s, sh, w, norm="rms", residual=r, gate=g, backend=backend)
        return out.square().sum() + h.sum()

    leaves = [t.clone().requires_grad_() for t in vals]
    torch.compile(f, backend="aot_eager", fullgraph=True)(*leaves).backward()
    expect = [t.clone().requires_grad_() for t in vals]
    f(*expect).backward()
    for a, e in zip(leaves, expect):
        torch.testing.assert_close(a.grad, e.grad)


@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("per_token", [False, True])
def test_adaln_backward_reference_formula(norm, per_token):
    """backward_reference (the CUDA fallback without Triton) equals autograd through the reference, in fp64."""
    gen = torch.Generator().manual_seed(RUN_SEED)
    d = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    ps = (3, 4, 7) if per_token else (3, 1, 7)
    x, s, sh, w, r, g = d(3, 4, 7), d(*ps), d(*ps), d(7), d(3, 4, 7), d(3, 7)
    b = d(7) if norm == "layer" else None
    rms = norm == "rms"
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, s, sh, w, b, r, g)]
    out, h, mean, rstd = mod.reference(*leaves, rms, 1e-5)
    go, gh = d(3, 4, 7), d(3, 4, 7)
    present = [t for t in leaves if t is not None]
    expect = dict(zip([k for k, t in zip(_ARGS, leaves) if t is not None],
                      torch.autograd.grad((out, h), present, (go, gh))))
    d_h, d_x, d_gate, d_s, d_sh, d_w, d_b = mod.backward_reference(go, gh, h.detach(), x, g, s, sh, w, b, mean, rstd,
                                                                   rms)
    got = {"x": d_x, "scale": d_s, "shift": d_sh, "weight": d_w, "residual": d_h, "gate": d_gate}
    if b is not None:
        got["bias"] = d_b
    for k, e in expect.items():
        torch.testing.assert_close(got[k], e, rtol=1e-10, atol=1e-10, msg=k)


def test_adaln_inference_fast_path_and_stats():
    """Under no_grad the C++ op runs below autograd (same values); the op's saved statistics are the row mean and
    1/√(Var + ε) (rms: 0 and 1/√(E[x²] + ε))."""
    x, s = torch.randn(2, 4, 16), torch.randn(2, 16)
    with torch.no_grad():
        fast = ops.adaln_modulate(x, s, s, backend="cpu")
    torch.testing.assert_close(fast, ops.adaln_modulate(x, s, s, backend="reference"))
    _, _, mean, rstd = torch.ops.fastdiff.adaln_modulate(x, None, None, None, None, None, None, False, 1e-6)
    var, m = torch.var_mean(x, -1, unbiased=False)
    torch.testing.assert_close(mean, m)
    torch.testing.assert_close(rstd, torch.rsqrt(var + 1e-6))
    _, _, mean, rstd = torch.ops.fastdiff.adaln_modulate(x, None, None, None, None, None, None, True, 1e-6)
    assert torch.equal(mean, torch.zeros_like(mean))
    torch.testing.assert_close(rstd, torch.rsqrt(x.square().mean(-1) + 1e-6))


def test_adaln_reference_is_f_layer_norm():
    x = torch.randn(2, 3, 10, dtype=torch.float64)
    out = mod.reference(x, None, None, None, None, None, None, False, 1e-6)[0]
    torch.testing.assert_close(out, F.layer_norm(x, (10,), eps=1e-6))


def test_adaln_triton_fp64_long_rows_backward():
    """fp64 rows longer than the Triton backward's fp64 limit take the plain PyTorch formula (same answer)."""
    tk = importlib.import_module("fastdiff.triton_kernels.adaln_modulate")
    d = tk.MAX_FP64_BWD_BLOCK_D + 1
    gen = torch.Generator().manual_seed(RUN_SEED)
    x, s, go = (torch.randn(shape, generator=gen, dtype=torch.float64) for shape in ((1, 2, d), (1, d), (1, 2, d)))
    out, h, mean, rstd = mod.reference(x, s, None, None, None, None, None, False, 1e-6)
    got = tk.adaln_modulate_backward(go, None, x, None, None, s, None, None, None, mean, rstd, False)
    expect = mod.backward_reference(go, None, x, None, None, s, None, None, None, mean, rstd, False)
    for g, e in zip(got, expect):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
