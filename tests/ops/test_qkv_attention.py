"""qkv_attention: every backend against guided-diffusion's einsum attention (forward and backward), both head
orders, odd T (not a multiple of the Triton block, T = 1), head dims 8..64, batch 1, non-contiguous and empty
inputs, fp32/fp16; errors; fp64 gradcheck; torch.compile. Shapes stay small: the Triton interpreter is slow."""
import importlib
import math
import random

import pytest
import torch

import fastdiff.ops as ops
qa = importlib.import_module("fastdiff.ops.qkv_attention")
from tests.ops._cases import RUN_SEED, backend_device, rand

BACKENDS = ["cpu", "triton"]
BACKENDS = [b for b in BACKENDS if b in qa.SUPPORTED]
# (N, H, C, T): T = 1, T at a 16-block edge, T not a power of two, head dims 8/16/32/64, batch 1.
SHAPES = [(1, 1, 8, 1), (2, 3, 8, 17), (1, 2, 16, 16), (1, 1, 32, 33), (2, 1, 64, 15), (1, 4, 16, 5), (3, 2, 8, 31)]


def _case(index, device, dtype):
    rng = random.Random(RUN_SEED * 31 + index)
    gen = torch.Generator().manual_seed(RUN_SEED * 31 + index)
    n, h, c, t = SHAPES[index % len(SHAPES)]
    noncontig = index % 3 == 2
    qkv = rand((n, 3 * h * c, t), dtype, device, gen, noncontig)
    if index % 5 == 4:  # a transposed layout: T is not the fastest axis
        qkv = qkv.transpose(1, 2).contiguous().transpose(1, 2)
    return qkv, h, rng.random() < 0.5, dict(index=index, shape=(n, h, c, t), dtype=str(dtype), noncontig=noncontig,
                                            seed=RUN_SEED)


def _max_err(a, b):
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _check(out, ref, exact, dtype, what, meta):
    """fp32: close to the reference; fp16/bf16: error vs the fp64 result at most 2x the reference's own."""
    assert out.shape == ref.shape and out.dtype == ref.dtype, (what, meta)
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4, msg=lambda m: f"{what} {meta}: {m}")
        return
    own = _max_err(ref, exact)
    err = _max_err(out, exact)
    assert err <= 2 * own + 1e-3, f"{what} {meta}: error {err:.3g} vs the reference's own {own:.3g}"


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("index", range(len(SHAPES) * 2))
def test_qkv_attention_matches_reference(name, dtype, index):
    device = backend_device(name)
    qkv, heads, legacy, meta = _case(index, device, dtype)
    meta["legacy"] = legacy
    grad = torch.randn(qkv.shape[0], qkv.shape[1] // 3, qkv.shape[2], device=device, dtype=dtype)

    def run(x, backend):
        x = x.detach().requires_grad_()
        out = ops.qkv_attention(x, heads, legacy=legacy, backend=backend)
        out.backward(grad.to(x.dtype))
        return out.detach(), x.grad

    out, dx = run(qkv, name)
    ref, dref = run(qkv, "reference")
    exact, dexact = run(qkv.double(), "reference")
    _check(out, ref, exact, dtype, "forward", meta)
    _check(dx, dref, dexact, dtype, "qkv gradient", meta)


def test_reference_matches_guided_diffusion_formula():
    """The two head orders as guided-diffusion writes them: legacy reshapes [N·H, 3C, T]; new chunks q, k, v."""
    n, h, c, t = 2, 3, 8, 10
    qkv = torch.randn(n, 3 * h * c, t, dtype=torch.float64)
    scale = 1 / math.sqrt(math.sqrt(c))

    def attend(q, k, v):
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        return torch.einsum("bts,bcs->bct", w, v).reshape(n, -1, t)

    q, k, v = qkv.reshape(n * h, 3 * c, t).split(c, dim=1)
    torch.testing.assert_close(ops.qkv_attention(qkv, h, legacy=True, backend="reference"), attend(q, k, v))
    q, k, v = (x.reshape(n * h, c, t) for x in qkv.chunk(3, dim=1))
    torch.testing.assert_close(ops.qkv_attention(qkv, h, legacy=False, backend="reference"), attend(q, k, v))
    # The orders differ (a test that could fail): same qkv, different outputs.
    assert not torch.allclose(ops.qkv_attention(qkv, h, legacy=True), ops.qkv_attention(qkv, h, legacy=False))


@pytest.mark.parametrize("name", ["reference"] + BACKENDS)
def test_qkv_attention_empty(name):
    device = backend_device(name)
    for shape in [(0, 12, 5), (2, 12, 0)]:
        qkv = torch.empty(shape, device=device)
        out = ops.qkv_attention(qkv, 2, backend=name)
        assert out.shape == (shape[0], 4, shape[2])


@pytest.mark.parametrize("name", ["reference"] + BACKENDS)
def test_qkv_attention_errors(name):
    qkv = torch.randn(2, 24, 5)
    with pytest.raises(ValueError, match=r"qkv width \(dim 1\) must be a positive multiple of 3\*num_heads = 9"):
        ops.qkv_attention(qkv, 3, backend=name)
    with pytest.raises(ValueError, match=r"qkv must be \[N, 3\*H\*C, T\]"):
        ops.qkv_attention(qkv[0], 2, backend=name)
    with pytest.raises(TypeError, match="qkv must be float16"):
        ops.qkv_attention(qkv.to(torch.int32), 2, backend=name)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        ops.qkv_attention(qkv, 0, backend=name)
    with pytest.raises(TypeError, match="legacy must be a bool"):
        ops.qkv_attention(qkv, 2, legacy="yes", backend=name)


def test_unsupported_backend_raises():
    missing = [b for b in ("cuda", "triton") if b not in qa.SUPPORTED]
    for name in missing:
        with pytest.raises(ops.BackendUnavailableError, match="qkv_attention"):
            ops.qkv_attention(torch.randn(1, 6, 3), 1, backend=name)


@pytest.mark.parametrize("name", ["reference"] + BACKENDS)
@pytest.mark.parametrize("legacy", [True, False])
def test_gradcheck_qkv_attention(name, legacy):
    # The Triton interpreter runs a forward per perturbed input: a smaller problem, fast mode.
    shape, fast = ((2, 3 * 2 * 4, 5), False) if name != "triton" else ((1, 3 * 2 * 2, 3), True)
    qkv = torch.randn(shape, dtype=torch.float64, device=backend_device(name), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.qkv_attention(x, 2, legacy=legacy, backend=name), (qkv,),
                                    fast_mode=fast)


def test_fp64_heads_over_the_shared_memory_limit_are_refused_by_name(monkeypatch):
    """Compiled (not interpreted), fp64 heads wider than MAX_FP64_HEAD_DIM do not fit a GPU: naming the triton
    backend raises before any launch; `auto` runs them on the reference (test_fp64_wide_heads_auto_gpu)."""
    kernels = importlib.import_module("fastdiff.triton_kernels.qkv_attention")
    launch = importlib.import_module("fastdiff.triton_kernels._launch")
    monkeypatch.setattr(launch, "interpreted", lambda: False)
    d = kernels.MAX_FP64_HEAD_DIM
    assert kernels.unsupported(d, torch.float64) is None
    assert kernels.unsupported(d + 1, torch.float32) is None
    assert "head dimension 129" in kernels.unsupported(d + 1, torch.float64)
    with pytest.raises(ops.BackendUnavailableError, match="head dimension 129"):
        ops.qkv_attention(torch.randn(1, 3 * (d + 1), 4, dtype=torch.float64), 1, backend="triton")
    with pytest.raises(ValueError, match="head dimension 129"):
        kernels.attention_forward(torch.randn(1, 3 * (d + 1), 4, dtype=torch.float64), 1, True)


def test_triton_fp64_is_fp64_accurate():
    """fp64 runs end to end in fp64 (statistics, accumulators, the log-sum-exp and the C^(-1/2) scale)."""
    qkv = torch.randn(2, 3 * 2 * 24, 19, dtype=torch.float64, device=backend_device("triton"))
    torch.testing.assert_close(ops.qkv_attention(qkv, 2, backend="triton"), qa.reference(qkv, 2),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_fp64_wide_heads_auto_gpu():
    qkv = torch.randn(1, 3 * 2 * 160, 33, dtype=torch.float64, device="cuda")
    torch.testing.assert_close(ops.qkv_attention(qkv, 2), qa.reference(qkv, 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["reference", "cpu"])
def test_compile_fullgraph_qkv_attention(name):
    qkv = torch.randn(2, 3 * 2 * 8, 7)

    def loss(x):
        return ops.qkv_attention(x, 2, legacy=False, backend=name).square().sum()

    x0 = qkv.clone().requires_grad_()
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x0), loss(qkv))
    compiled(x0).backward()
    x1 = qkv.clone().requires_grad_()
    loss(x1).backward()
    torch.testing.assert_close(x0.grad, x1.grad)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 4, 64, 1000), (1, 8, 64, 4096), (3, 2, 48, 257), (1, 2, 128, 129)])
def test_qkv_attention_triton_gpu(dtype, shape):
    """The compiled kernels (GPU block sizes, bf16) on ADM-sized problems, forward and backward."""
    n, h, c, t = shape
    gen = torch.Generator().manual_seed(RUN_SEED)
    qkv = torch.randn(n, 3 * h * c, t, generator=gen).to("cuda", dtype)
    grad = torch.randn(n, h * c, t, generator=gen).to("cuda", dtype)
    meta = dict(shape=shape, dtype=str(dtype), seed=RUN_SEED)
    for legacy in (True, False):
        def run(x, backend):
            x = x.detach().requires_grad_()
            out = ops.qkv_attention(x, h, legacy=legacy, backend=backend)
            out.backward(grad.to(x.dtype))
            return out.detach(), x.grad

        out, dx = run(qkv, "triton")
        ref, dref = run(qkv, "reference")
        exact, dexact = run(qkv.double(), "reference")
        _check(out, ref, exact, dtype, "forward", dict(meta, legacy=legacy))
        _check(dx, dref, dexact, dtype, "qkv gradient", dict(meta, legacy=legacy))


def test_heads_times_batch_on_the_unbounded_grid_axis(monkeypatch):
    """N·H programs go on grid axis 0 (2^31 − 1), query blocks on axis 1 (65,535): batch 4,096 with CFG × 16 heads
    launches. Recorded by stand-in kernels (those of triton_kernels/attention.py, which qkv_attention's launchers
    run), so nothing runs."""
    kernels = importlib.import_module("fastdiff.triton_kernels.qkv_attention")
    flash = importlib.import_module("fastdiff.triton_kernels.attention")
    grids = {}

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            grids[self.name] = grid
            return lambda *args, **kwargs: None

    for name in ("_fwd_kernel", "_delta_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"):
        monkeypatch.setattr(flash, name, Recorder(name))
    n, h, c, t = 2 * 4096, 16, 8, 16
    qkv = torch.empty(n, 3 * h * c, t).as_strided((n, 3 * h * c, t), (0, t, 1))  # one row of storage, no copy
    out, lse = kernels.attention_forward(qkv, h, True)
    kernels.attention_backward(qkv, out, lse, out, h, True)
    assert set(grids) == {"_fwd_kernel", "_delta_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"}
    for name, grid in grids.items():
        assert grid[0] == n * h and grid[1] <= 65535, (name, grid)
