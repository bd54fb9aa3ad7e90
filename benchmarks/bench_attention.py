"""ADM attention (`qkv_attention`, head dim 64) at T ∈ {256, 1024, 4096}: guided-diffusion's einsum attention
(`reference`), torch's scaled_dot_product_attention on the same views (`sdpa`; on CUDA in fp16/bf16 its flash
backend), torch.compile of the reference (`compile`), and fastdiff's `cpu` and `triton` backends. Forward only;
each result carries TFLOP/s (4·N·H·T²·C flops: two matmuls) in extra_info, and the Triton rows the tile
configuration (BLOCK_M x BLOCK_N x BLOCK_D, warps, stages) the kernels run with.

Diffusers' layout (`attention`, `test_diffusers_attention`): Stable Diffusion 1.5's attention at 64x64 latents
(self [2, 4096, 320], 8 heads of 40; cross with k, v [2, 77, 320] from the text encoder's 768 channels), the
same at 32x32 (1024 tokens), self-attention on q, k, v from a fused qkv projection (chunk views), and a tiny test
model's [2, 64, 32] with 2 heads (per-call overhead). Providers: `sdpa` is the eager diffusers sequence, what
AttnProcessor2_0 runs between the projections and to_out (view/transpose, F.scaled_dot_product_attention on the
strided views, transpose/reshape back): the baseline; `reference` is fastdiff's plain-PyTorch specification (einsum,
fp32 softmax); `cpu`, `cuda`, `triton` the op's backends (`cpu` and `cuda` are torch SDPA on [B, H, L, D] views,
`triton` fastdiff's flash kernel). Each case runs forward only (`*_fwd`) and forward + backward (`*_fwdbwd`: one
torch.autograd.grad of q, k, v's leaves).

Run through `benchmarks/run.py`, or as a quick check:
`python -m pytest benchmarks/bench_attention.py --benchmark-disable -q` (each benchmark once, smallest size).
"""
from __future__ import annotations

import contextlib
import importlib
import zlib

import pytest
import torch
import torch.nn.functional as F

import fastdiff_bench as fb
from conftest import compile_backend, smoke_mode
from fastdiff import ops
from fastdiff.ops import BackendUnavailableError

QA = importlib.import_module("fastdiff.ops.qkv_attention")
PROVIDERS = ("reference", "sdpa", "compile", "cpu", "triton")
HEAD_DIM = 64
LENGTHS = (256, 1024, 4096)  # 16², 32², 64² positions
HEADS = {"cpu": 4, "cuda": 8}  # batch 1 on CPU (sampling); batch 4 on CUDA: enough (N·H) programs to fill the SMs
BATCH = {"cpu": 1, "cuda": 4}
CPU_DEFAULT_LENGTHS = (256, 1024)  # T = 4096 runs on CPU with --bench-full only (einsum keeps a T×T matrix)


def _points(device: str, full: bool, smoke: bool):
    lengths = LENGTHS[:1] if smoke and not full else LENGTHS
    if device == "cpu" and not full:
        lengths = tuple(t for t in lengths if t in CPU_DEFAULT_LENGTHS)
    dtypes = ("float16", "bfloat16", "float32") if device == "cuda" else (
        ("float32", "bfloat16") if full else ("float32",))
    return [(t, d) for t in lengths for d in dtypes]


def pytest_generate_tests(metafunc):
    if "diffusers_case" in metafunc.fixturenames:
        _generate_diffusers(metafunc)
        return
    if "provider" not in metafunc.fixturenames or "length" not in metafunc.fixturenames:
        return
    config = metafunc.config
    device = config.getoption("--bench-device")
    params, ids = [], []
    for length, dtype in _points(device, config.getoption("--bench-full"), smoke_mode(config)):
        for legacy in (True, False):
            for provider in PROVIDERS:
                params.append((length, dtype, legacy, provider))
                ids.append(f"T{length}-{dtype}-{'legacy' if legacy else 'new'}-{provider}")
    metafunc.parametrize("length,dtype_name,legacy,provider", params, ids=ids)


def _sdpa_context(device: str, dtype: torch.dtype):
    """On CUDA in fp16/bf16, SDPA restricted to its flash backend (the comparison the issue asks for)."""
    if device == "cuda" and dtype in (torch.float16, torch.bfloat16):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    return contextlib.nullcontext()


def _provider_call(provider: str, heads: int, legacy: bool, device: str, dtype, sample, info, config):
    if provider == "compile":
        compiled = fb.compile_reference(QA.reference, compile_backend(config), dynamic=None)
        info["compile_backend"] = compile_backend(config)
        return lambda x: compiled(x, heads, legacy)
    if provider == "sdpa":
        def sdpa(x):
            with _sdpa_context(device, dtype):
                return QA.cpu(x, heads, legacy)
        return sdpa
    return lambda x: ops.qkv_attention(x, heads, legacy=legacy, backend=provider)


def test_attention(benchmark, request, length, dtype_name, legacy, provider):
    """Time one ADM attention forward on qkv [N, 3·H·64, T] with `provider`."""
    config = request.config
    device, dtype = fb.runnable_or_skip(config, None if provider == "sdpa" else provider, dtype_name)
    n, heads = BATCH[device], HEADS[device]
    shape = (n, 3 * heads * HEAD_DIM, length)
    generator = torch.Generator(device=device).manual_seed(zlib.crc32(f"attn/{length}/{dtype_name}".encode()))
    make = lambda: fb._randn(shape, dtype, device, generator)  # noqa: E731
    sample = make()
    flops = 4 * n * heads * length * length * HEAD_DIM

    benchmark.group = f"attention | T{length} | {dtype_name} | {'legacy' if legacy else 'new'} order"
    info = benchmark.extra_info
    info.update(suite="attention", provider=provider, case=f"qkv_attention_{'legacy' if legacy else 'new'}",
                shape=fb.shape_str(shape), dtype=dtype_name, device=device, legacy=legacy, heads=heads, head_dim=HEAD_DIM, flops=flops)
    if provider == "triton":  # the tiles every GPU gets for this dtype and head dim (one table, see _config)
        bm, bn, bd, warps, stages = importlib.import_module("fastdiff.triton_kernels.qkv_attention")._config(
            HEAD_DIM, dtype)
        info["tiles"] = f"{bm}x{bn}x{bd} w{warps} s{stages}"
    fn = _provider_call(provider, heads, legacy, device, dtype, sample, info, config)
    try:
        fn(sample)
    except BackendUnavailableError as exc:
        pytest.skip(f"{provider}: {exc}")
    except RuntimeError as exc:  # SDPA's flash backend has no kernel for this GPU or dtype
        if provider != "sdpa":
            raise
        pytest.skip(f"{provider}: {type(exc).__name__}: {str(exc)[:300]}")

    if smoke_mode(config):
        benchmark(fn, sample)
        return
    moved = 4 * sample.numel() // 3 * sample.element_size()  # qkv read, output written
    median = fb.measure(benchmark, fn, sample, device=device, make=make, set_bytes=moved, max_rounds=30)
    info["tflops"] = flops / median / 1e12


# ------------------------------------------------------------------------------ diffusers' layout (ops.attention)

ATT = importlib.import_module("fastdiff.ops.attention")
DIFFUSERS_PROVIDERS = ("reference", "sdpa", "cpu", "cuda", "triton")
# name -> (B, Lq, Lk, H·D, H, layout): "separate" q, k, v (diffusers' to_q / to_k / to_v), "fused" chunks of one
# [B, L, 3·H·D] projection (fuse_qkv_projections).
DIFFUSERS_CASES = {
    "sd15_self_64x64": (2, 4096, 4096, 320, 8, "separate"),
    "sd15_cross_64x64": (2, 4096, 77, 320, 8, "separate"),
    "sd15_self_32x32": (2, 1024, 1024, 320, 8, "separate"),
    "sd15_self_32x32_fused": (2, 1024, 1024, 320, 8, "fused"),
    "sd15_cross_32x32": (2, 1024, 77, 320, 8, "separate"),
    "tiny_self": (2, 64, 64, 32, 2, "fused"),
}
SMOKE_CASES = ("tiny_self", "sd15_cross_32x32")
PASSES = ("fwd", "fwdbwd")


def _generate_diffusers(metafunc):
    config = metafunc.config
    device, full = config.getoption("--bench-device"), config.getoption("--bench-full")
    dtypes = ("float16", "bfloat16", "float32") if device == "cuda" else (("float32", "bfloat16") if full else
                                                                          ("float32",))
    names = [n for n in DIFFUSERS_CASES if n in SMOKE_CASES] if smoke_mode(config) and not full else list(
        DIFFUSERS_CASES)
    params, ids = [], []
    for name in names:
        for dtype in dtypes:
            for pass_ in PASSES:
                for provider in DIFFUSERS_PROVIDERS:
                    params.append((name, dtype, pass_, provider))
                    ids.append(f"{name}-{dtype}-{pass_}-{provider}")
    metafunc.parametrize("diffusers_case,dtype_name,pass_,provider", params, ids=ids)


def diffusers_sdpa(q, k, v, heads):
    """AttnProcessor2_0 between the projections and to_out (diffusers 0.3x-0.4x), without mask and dropout."""
    batch_size = q.shape[0]
    head_dim = k.shape[-1] // heads
    query = q.view(batch_size, -1, heads, head_dim).transpose(1, 2)
    key = k.view(batch_size, -1, heads, head_dim).transpose(1, 2)
    value = v.view(batch_size, -1, heads, head_dim).transpose(1, 2)
    hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
    return hidden_states.transpose(1, 2).reshape(batch_size, -1, heads * head_dim)


def _diffusers_inputs(name, dtype, device, generator):
    """(leaves, q, k, v) for a case: leaves require grad; q, k, v are their views."""
    b, lq, lk, width, _, layout = DIFFUSERS_CASES[name]
    randn = lambda *shape: fb._randn(shape, dtype, device, generator).requires_grad_()  # noqa: E731
    if layout == "fused":
        qkv = randn(b, lq, 3 * width)
        return [qkv], *qkv.chunk(3, -1)
    leaves = [randn(b, lq, width), randn(b, lk, width), randn(b, lk, width)]
    return leaves, *leaves


def test_diffusers_attention(benchmark, request, diffusers_case, dtype_name, pass_, provider):
    """Time `attention` in diffusers' layout (forward, or forward + backward) with `provider`."""
    config = request.config
    # The op's cpu / cuda backends are torch's SDPA (no fastdiff._C); which backend can run is _plan's answer below.
    device, dtype = fb.runnable_or_skip(config, None, dtype_name)
    b, lq, lk, width, heads, layout = DIFFUSERS_CASES[diffusers_case]
    if provider == "reference" and device == "cpu" and lq * lk > 1024 * 1024 and not config.getoption(
            "--bench-full"):
        pytest.skip("reference: the einsum keeps [B, H, Lq, Lk] fp32 logits (1 GiB at 4096 x 4096; seconds per "
                    "call on CPU): --bench-full only")
    seed = zlib.crc32(f"dattn/{diffusers_case}/{dtype_name}".encode())
    generator = torch.Generator(device=device).manual_seed(seed)
    leaves, q, k, v = _diffusers_inputs(diffusers_case, dtype, device, generator)
    grad = fb._randn((b, lq, width), dtype, device, generator)
    if provider == "sdpa":
        forward = lambda: diffusers_sdpa(q, k, v, heads)  # noqa: E731
    else:
        forward = lambda: ops.attention(q, k, v, heads, backend=provider)  # noqa: E731
    if pass_ == "fwd":
        def run(_sample):
            with torch.no_grad():
                return forward()
    else:
        def run(_sample):
            return torch.autograd.grad(forward(), leaves, grad)

    head_dim = width // heads
    flops = 4 * b * heads * lq * lk * head_dim * (1 if pass_ == "fwd" else 3.5)  # backward: 5 matmuls (+ recompute)
    benchmark.group = f"attention (diffusers) | {diffusers_case} | {dtype_name} | {pass_}"
    info = benchmark.extra_info
    info.update(suite="attention", provider=provider, case=f"{diffusers_case}_{pass_}",
                shape=f"{b}x{lq}x{width} kv {b}x{lk}x{width} H{heads}", dtype=dtype_name, device=device,
                heads=heads, head_dim=head_dim, layout=layout, flops=flops)
    if provider != "sdpa":
        try:
            info["plan"] = ATT._plan(q.device, q.dtype, head_dim, provider)[1]
        except BackendUnavailableError as exc:
            pytest.skip(f"{provider}: {exc}")
    if provider == "triton":
        bm, bn, bd, warps, stages = importlib.import_module("fastdiff.triton_kernels.attention")._config(head_dim,
                                                                                                         dtype)
        info["tiles"] = f"{bm}x{bn}x{bd} w{warps} s{stages}"
    try:
        run(None)
    except BackendUnavailableError as exc:
        pytest.skip(f"{provider}: {exc}")
    if smoke_mode(config):
        benchmark(run, None)
        return
    median = fb.measure(benchmark, run, None, device=device, max_rounds=30)
    info["tflops"] = flops / median / 1e12
