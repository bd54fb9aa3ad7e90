"""ADM attention (`qkv_attention`, head dim 64) at T ∈ {256, 1024, 4096}: guided-diffusion's einsum attention
(`reference`), torch's scaled_dot_product_attention on the same views (`sdpa`; on CUDA in fp16/bf16 its flash
backend), torch.compile of the reference (`compile`), and fastdiff's `cpu` and `triton` backends. Forward only;
each result carries TFLOP/s (4·N·H·T²·C flops: two matmuls) in extra_info, and the Triton rows the tile
configuration (BLOCK_M x BLOCK_N x BLOCK_D, warps, stages) the kernels run with.

Run through `benchmarks/run.py`, or as a quick check:
`python -m pytest benchmarks/bench_attention.py --benchmark-disable -q` (each benchmark once, smallest size).
"""
from __future__ import annotations

import contextlib
import importlib
import zlib

import pytest
import torch

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
