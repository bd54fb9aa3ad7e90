"""attention (diffusers' layout): every backend against the reference (forward and backward), self- and
cross-attention (Lk ≠ Lq; lengths 1, 13, 77, 17 off the 16-row Triton tile), head dims 8..128 including 40, 72,
80 (not powers of two), batch 1, views from packed projections, a strided head dimension, empty inputs,
fp32/fp16 (bf16 on the CPU backend); errors; backend choice; fp64 gradcheck; torch.compile; diffusers' own
Attention + AttnProcessor2_0. Shapes stay small: the Triton interpreter is slow."""
import importlib
import math
import random

import pytest
import torch
import torch.nn.functional as F

import fastdiff.ops as ops
from tests.ops._cases import RUN_SEED, backend_device

A = importlib.import_module("fastdiff.ops.attention")
BACKENDS = ["cpu", "triton", pytest.param("cuda", marks=pytest.mark.gpu)]
# (B, Lq, Lk, H, D): self (Lq = Lk) and cross; Lq or Lk = 1, 13, 77 (CLIP's text length), 17 (a 16-tile + 1);
# D = 8, 16, 40, 64, 72, 80, 128.
SHAPES = [(2, 13, 13, 2, 40), (1, 1, 1, 1, 8), (2, 13, 77, 2, 40), (1, 17, 17, 3, 16), (2, 1, 13, 4, 8),
          (1, 5, 1, 1, 72), (1, 16, 33, 2, 64), (2, 9, 7, 1, 80), (1, 3, 5, 1, 128)]
# How q, k, v are laid out: chunks of one fused projection (self) or of a kv projection (cross), separate
# contiguous tensors, or a head dimension that is not unit-stride (a transposed storage).
LAYOUTS = ("packed", "contiguous", "strided_channels")


def _inputs(b, lq, lk, h, d, dtype, device, layout, gen):
    """(leaves, (q, k, v)): the tensors that receive gradients and the views passed to the op."""
    randn = lambda *shape: torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    w = h * d
    if layout == "packed":
        if lq == lk:
            qkv = randn(b, lq, 3 * w).requires_grad_()
            return [qkv], qkv.chunk(3, -1)
        q, kv = randn(b, lq, w).requires_grad_(), randn(b, lk, 2 * w).requires_grad_()
        return [q, kv], (q, *kv.chunk(2, -1))
    if layout == "contiguous":
        leaves = [randn(b, n, w).requires_grad_() for n in (lq, lk, lk)]
        return leaves, tuple(leaves)
    leaves = [randn(b, w, n).requires_grad_() for n in (lq, lk, lk)]  # [B, H·D, L] storage
    return leaves, tuple(x.transpose(1, 2) for x in leaves)


def _case(index, dtype, device):
    rng = random.Random(RUN_SEED * 131 + index)
    gen = torch.Generator().manual_seed(RUN_SEED * 131 + index)
    shape = SHAPES[index % len(SHAPES)]
    layout = LAYOUTS[index % len(LAYOUTS)]
    scale = None if rng.random() < 0.7 else rng.uniform(0.05, 0.5)
    leaves, qkv = _inputs(*shape, dtype, device, layout, gen)
    grad = torch.randn(shape[0], shape[1], shape[3] * shape[4], generator=gen).to(device=device, dtype=dtype)
    return leaves, qkv, shape[3], scale, grad, dict(index=index, shape=shape, layout=layout, scale=scale,
                                                    dtype=str(dtype), seed=RUN_SEED)


def _run(leaves, qkv, heads, scale, grad, backend, cast=None):
    """(out, grads of the leaves) of one forward + backward on fresh leaves (optionally cast first)."""
    fresh = [x.detach().to(cast or x.dtype).requires_grad_() for x in leaves]
    views = _like(qkv, leaves, fresh)
    out = ops.attention(*views, heads, scale=scale, backend=backend)
    out.backward(grad.to(out.dtype))
    return out.detach(), [x.grad for x in fresh]


def _like(views, old, new):
    """The same views of `new` leaves as `views` are of `old` (as_strided at the same offsets)."""
    out = []
    for v in views:
        i = next(i for i, x in enumerate(old) if v.untyped_storage().data_ptr() == x.untyped_storage().data_ptr())
        off = v.storage_offset() - old[i].storage_offset()
        out.append(new[i].as_strided(v.shape, v.stride(), new[i].storage_offset() + off))
    return out


def _max_err(a, b):
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _check(out, ref, exact, dtype, what, meta):
    """fp32: close to the reference; fp16/bf16: error vs the fp64 result at most 2x the reference's own (plus a
    storage-precision floor)."""
    assert out.shape == ref.shape and out.dtype == ref.dtype, (what, meta)
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4, msg=lambda m: f"{what} {meta}: {m}")
        return
    own = _max_err(ref, exact)
    err = _max_err(out, exact)
    floor = 2e-3 if dtype == torch.float16 else 2e-2
    assert err <= 2 * own + floor * max(1.0, float(exact.abs().max())), \
        f"{what} {meta}: error {err:.3g} vs the reference's own {own:.3g}"


def _dtypes():
    return [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", _dtypes(), ids=str)
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_attention_matches_reference(name, dtype, index):
    device = backend_device(name)
    if dtype == torch.bfloat16 and name == "triton" and device == "cpu":
        pytest.skip("Triton's interpreter has no bfloat16 dot (the backend refuses it by name)")
    leaves, qkv, heads, scale, grad, meta = _case(index, dtype, device)
    out, grads = _run(leaves, qkv, heads, scale, grad, name)
    assert out.is_contiguous(), meta
    ref, rgrads = _run(leaves, qkv, heads, scale, grad, "reference")
    exact, egrads = _run(leaves, qkv, heads, scale, grad, "reference", cast=torch.float64)
    _check(out, ref, exact, dtype, "forward", meta)
    for i, (g, r, e) in enumerate(zip(grads, rgrads, egrads)):
        _check(g, r, e, dtype, f"gradient of leaf {i}", meta)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_without_autograd_matches_with(dtype):
    """The cpu backend's no-autograd path (as_strided views, the result's [B, Lq, H, D] memory taken as is) gives
    exactly the autograd path's output (views, transpose + reshape), for every shape and layout, and a contiguous
    [B, Lq, H·D] result."""
    for index in range(len(SHAPES) * len(LAYOUTS)):
        leaves, (q, k, v), heads, scale, _, meta = _case(index, dtype, "cpu")
        with torch.no_grad():
            fast = ops.attention(q, k, v, heads, scale=scale, backend="cpu")
        slow = ops.attention(q, k, v, heads, scale=scale, backend="cpu")
        assert slow.requires_grad and not fast.requires_grad, meta
        assert fast.is_contiguous() and fast.shape == slow.shape, meta
        assert torch.equal(fast, slow.detach()), meta


def test_reference_matches_the_diffusers_sequence():
    """The reference is what AttnProcessor2_0 computes: view(B, L, H, D).transpose(1, 2), softmax(q kᵀ/√D) v,
    transpose back (fp64, written out here); and heads are channel blocks, not interleaved (a test that could
    fail: another split gives another answer)."""
    b, lq, lk, h, d = 2, 6, 5, 3, 4
    q, k, v = torch.randn(b, lq, h * d, dtype=torch.float64), *torch.randn(2, b, lk, h * d, dtype=torch.float64)
    split = lambda x: x.view(b, -1, h, d).transpose(1, 2)  # noqa: E731
    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
    expected = (w @ split(v)).transpose(1, 2).reshape(b, lq, h * d)
    torch.testing.assert_close(ops.attention(q, k, v, h, backend="reference"), expected)
    interleaved = lambda x: x.view(b, -1, d, h).permute(0, 3, 1, 2)  # noqa: E731
    w2 = torch.softmax(interleaved(q) @ interleaved(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
    assert not torch.allclose((w2 @ interleaved(v)).transpose(1, 2).reshape(b, lq, h * d), expected)
    torch.testing.assert_close(ops.attention(q, k, v, h, scale=0.3, backend="reference"),
                               F.scaled_dot_product_attention(split(q), split(k), split(v), scale=0.3)
                               .transpose(1, 2).reshape(b, lq, h * d))


@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_in_diffusers_attention_module(name):
    """Swapped into diffusers' own Attention (self and cross) as its processor, the op gives AttnProcessor2_0's
    output and gradients."""
    attention_processor = pytest.importorskip("diffusers.models.attention_processor")

    class Processor:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
            assert attention_mask is None
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
            return attn.to_out[1](attn.to_out[0](ops.attention(q, k, v, attn.heads, backend=name)))

    torch.manual_seed(RUN_SEED)
    for cross_dim in (None, 24):
        attn = attention_processor.Attention(query_dim=32, cross_attention_dim=cross_dim, heads=2, dim_head=16)
        x = torch.randn(2, 13, 32, requires_grad=True)
        ctx = torch.randn(2, 7, 24) if cross_dim else None
        attn.set_processor(attention_processor.AttnProcessor2_0())
        expected = attn(x, encoder_hidden_states=ctx)
        (ex_grad,) = torch.autograd.grad(expected.square().sum(), x)
        attn.set_processor(Processor())
        got = attn(x, encoder_hidden_states=ctx)
        (grad,) = torch.autograd.grad(got.square().sum(), x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad, ex_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_attention_empty(name):
    device = backend_device(name)
    for b, lq in ((0, 5), (2, 0)):
        q = torch.randn(b, lq, 12, device=device, requires_grad=True)
        k = torch.randn(b, 3, 12, device=device, requires_grad=True)
        v = torch.randn(b, 3, 12, device=device, requires_grad=True)
        out = ops.attention(q, k, v, 2, backend=name)
        assert out.shape == (b, lq, 12)
        out.sum().backward()
        assert q.grad.shape == q.shape and not k.grad.any() and not v.grad.any()


@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_attention_errors(name):
    q, k = torch.randn(2, 5, 12), torch.randn(2, 7, 12)
    call = lambda *args, **kw: ops.attention(*args, **{"backend": name, **kw})  # noqa: E731
    with pytest.raises(ValueError, match=r"width of q \(dim 2\) must be a positive multiple of heads = 5, got 12"):
        call(q, k, k, 5)
    with pytest.raises(ValueError, match=r"q must be \[B, Lq, H\*D\]"):
        call(q[0], k, k, 2)
    with pytest.raises(ValueError, match=r"k must be \[B, Lk, H\*D\] = \[2, Lk, 12\]"):
        call(q, k[:1], k[:1], 2)
    with pytest.raises(ValueError, match=r"k must be \[B, Lk, H\*D\]"):
        call(q, k[..., :6], k[..., :6], 2)
    with pytest.raises(ValueError, match=r"v must have k's shape \(2, 7, 12\), got \(2, 6, 12\)"):
        call(q, k, k[:, :6], 2)
    with pytest.raises(ValueError, match=r"k and v must have at least one token \(Lk >= 1\)"):
        call(q, k[:, :0], k[:, :0], 2)
    with pytest.raises(TypeError, match="q must be float16"):
        call(q.to(torch.int32), k, k, 2)
    with pytest.raises(TypeError, match="v has dtype torch.float64 but q has torch.float32"):
        call(q, k, k.double(), 2)
    with pytest.raises(TypeError, match="k must be a torch.Tensor, got list"):
        call(q, [1.0], k, 2)
    with pytest.raises(ValueError, match="k is on meta but q is on cpu"):
        call(q, k.to("meta"), k, 2)
    for bad in (0, -1, 2.0, True, "2"):
        with pytest.raises(ValueError, match="heads must be a positive int"):
            call(q, k, k, bad)
    for bad in (float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ValueError, match="scale must be None"):
            call(q, k, k, 2, scale=bad)
    with pytest.raises(ValueError, match="backend must be one of"):
        call(q, k, k, 2, backend="fast")


def test_attention_plan_and_named_backends(monkeypatch):
    q = torch.randn(1, 4, 16)
    assert ops.attention_plan(q, q, q, 2)[0] == "cpu"
    assert ops.attention_plan(q, q, q, 2, backend="reference")[0] == "reference"
    with ops.use_backend("reference"):
        assert ops.attention_plan(q, q, q, 2)[0] == "reference"
    with pytest.raises(ops.BackendUnavailableError, match="'cuda' was requested for op 'attention'.*CUDA tensors"):
        ops.attention(q, q, q, 2, backend="cuda")
    if not torch.cuda.is_available():  # the interpreter runs CPU tensors, but has no bf16 dot
        assert ops.attention_plan(q, q, q, 2, backend="triton")[0] == "triton"
        with pytest.raises(ops.BackendUnavailableError, match="triton.*bfloat16"):
            ops.attention(q.bfloat16(), q.bfloat16(), q.bfloat16(), 2, backend="triton")
    # auto on a CUDA device (the choice only; nothing runs): SDPA's flash kernels where they take the inputs,
    # else the Triton kernel, else the reference.
    cuda = torch.device("cuda")
    for dtype, d, expected in ((torch.float16, 40, "cuda"), (torch.bfloat16, 256, "cuda"),
                               (torch.float16, 264, "triton"), (torch.float16, 36, "triton"),
                               (torch.float32, 64, "cuda"), (torch.float32, 36, "triton"),
                               (torch.float64, 64, "triton")):
        name, reason = A._plan(cuda, dtype, d, "auto")
        assert name == expected and str(d) in reason, (dtype, d, name, reason)
    monkeypatch.setattr(importlib.import_module("fastdiff.triton_kernels._launch"), "interpreted", lambda: False)
    name, reason = A._plan(cuda, torch.float64, 160, "auto")
    assert name == "reference" and "160" in reason
    with pytest.raises(ops.BackendUnavailableError, match="head dimension 160"):
        A._plan(cuda, torch.float64, 160, "triton")


@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_gradcheck_attention(name):
    # The Triton interpreter runs a forward per perturbed input: a smaller problem, fast mode.
    b, lq, lk, h, d = (2, 3, 4, 2, 3) if name != "triton" else (1, 2, 3, 1, 2)
    gen = torch.Generator().manual_seed(RUN_SEED)
    q = torch.randn(b, lq, h * d, dtype=torch.float64, generator=gen).requires_grad_()
    kv = torch.randn(b, lk, 2 * h * d, dtype=torch.float64, generator=gen).requires_grad_()
    fn = lambda q, kv: ops.attention(q, *kv.chunk(2, -1), h, scale=0.7, backend=name)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, kv), fast_mode=name == "triton")


def test_triton_fp64_is_fp64_accurate():
    """fp64 runs end to end in fp64 (statistics, accumulators, the log-sum-exp and the scale)."""
    q, k, v = torch.randn(3, 2, 19, 2 * 24, dtype=torch.float64).unbind(0)
    torch.testing.assert_close(ops.attention(q, k[:, :11], v[:, :11], 2, backend="triton"),
                               A.reference(q, k[:, :11], v[:, :11], 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["reference", "cpu", "auto"])
def test_compile_fullgraph_attention(name):
    q, kv = torch.randn(2, 7, 16), torch.randn(2, 5, 32)

    def loss(q, kv):
        k, v = kv.chunk(2, -1)
        return ops.attention(q, k, v, 2, backend=None if name == "auto" else name).square().sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    q0, kv0 = q.clone().requires_grad_(), kv.clone().requires_grad_()
    torch.testing.assert_close(compiled(q0, kv0), loss(q, kv))
    compiled(q0, kv0).backward()
    q1, kv1 = q.clone().requires_grad_(), kv.clone().requires_grad_()
    loss(q1, kv1).backward()
    torch.testing.assert_close(q0.grad, q1.grad)
    torch.testing.assert_close(kv0.grad, kv1.grad)


def test_compile_fullgraph_attention_no_grad():
    """Inference (no autograd) takes the cpu backend's as_strided path; it traces too."""
    q, kv = torch.randn(2, 7, 16), torch.randn(2, 5, 32)
    fn = lambda q, kv: ops.attention(q, *kv.chunk(2, -1), 2, scale=0.4)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(fn, backend="aot_eager", fullgraph=True)(q, kv), fn(q, kv))


def test_heads_times_batch_on_the_unbounded_grid_axis(monkeypatch):
    """B·H programs on grid axis 0 (2^31 − 1), query / key blocks on axis 1 (65,535), for Lq ≠ Lk. Recorded by
    stand-in kernels, so nothing runs."""
    kernels = importlib.import_module("fastdiff.triton_kernels.attention")
    grids = {}

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            grids.setdefault(self.name, grid)
            return lambda *args, **kwargs: None

    for name in ("_fwd_kernel", "_delta_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"):
        monkeypatch.setattr(kernels, name, Recorder(name))
    b, h, d, lq, lk = 2 * 4096, 16, 8, 17, 33
    q = torch.empty(1, 1, h * d).expand(b, lq, h * d)  # one row of storage, no copy
    k = torch.empty(1, 1, h * d).expand(b, lk, h * d)
    out, lse = kernels.attention_forward(q, k, k, h, 0.5)
    kernels.attention_backward(q, k, k, out, lse, out, h, 0.5)
    bm, bn = kernels._config(d, q.dtype)[:2]
    assert grids == {"_fwd_kernel": (b * h, math.ceil(lq / bm)), "_delta_kernel": (b * h, math.ceil(lq / bm)),
                     "_bwd_dkdv_kernel": (b * h, math.ceil(lk / bn)), "_bwd_dq_kernel": (b * h, math.ceil(lq / bm))}


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 1024, 1024, 8, 40), (2, 4096, 77, 8, 40), (2, 1024, 77, 8, 80),
                                   (1, 256, 256, 8, 160), (3, 257, 129, 2, 72)])
def test_attention_gpu(name, dtype, shape):
    """The compiled kernels (GPU tiles, bf16) and torch's at Stable Diffusion's sizes, forward and backward."""
    b, lq, lk, h, d = shape
    gen = torch.Generator().manual_seed(RUN_SEED)
    leaves, qkv = _inputs(b, lq, lk, h, d, dtype, "cuda", "packed", gen)
    grad = torch.randn(b, lq, h * d, generator=gen).to("cuda", dtype)
    meta = dict(shape=shape, dtype=str(dtype), seed=RUN_SEED)
    out, grads = _run(leaves, qkv, h, None, grad, name)
    ref, rgrads = _run(leaves, qkv, h, None, grad, "reference")
    exact, egrads = _run(leaves, qkv, h, None, grad, "reference", cast=torch.float64)
    _check(out, ref, exact, dtype, "forward", meta)
    for g, r, e in zip(grads, rgrads, egrads):
        _check(g, r, e, dtype, "gradient", meta)
