"""Per-step sampler update: every provider (reference eager, torch.compile of the reference, cpu, cuda,
triton) on the cases and sizes of `fastdiff_bench`, grouped by case/shape/dtype so ratios come from one run.

Run through `benchmarks/run.py` (which adds --benchmark-enable and writes the report), or as a quick check:
`python -m pytest benchmarks/bench_sampler_step.py --benchmark-disable -q` (each benchmark once, smallest size).
"""
from __future__ import annotations

import time
import zlib

import pytest
import torch

import fastdiff_bench as fb
from conftest import compile_backend, smoke_mode
from fastdiff.ops import BackendUnavailableError


def pytest_generate_tests(metafunc):
    """Parametrize over case x (shape, dtype) x provider for the chosen device and mode."""
    if "provider" not in metafunc.fixturenames or "case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    device = config.getoption("--bench-device")
    points = fb.grid(device, config.getoption("--bench-full"), smoke_mode(config))
    params, ids = [], []
    for case in fb.CASES:
        for shape, dtype in points:
            for provider in fb.PROVIDERS:
                params.append((case, shape, dtype, provider))
                label = "bw256MB" if shape == "bw" else fb.shape_str(shape)
                ids.append(f"{case}-{label}-{dtype}-{provider}")
    metafunc.parametrize("case,shape,dtype_name,provider", params, ids=ids)


def _compiled_call(case: fb.Case, backend: str, sample: dict, info: dict, dynamic: bool | None):
    """torch.compile of the case's reference; falls back to aot_eager when `backend` cannot compile here."""
    for name in dict.fromkeys((backend, "aot_eager")):
        compiled = fb.compile_reference(case.reference, name, dynamic)
        fn = lambda d, c=compiled: c(*case.reference_args(d))[0]  # noqa: E731
        start = time.perf_counter()
        try:
            fn(sample)
        except Exception as exc:  # inductor needs a working C++/Triton toolchain; record why it was not used
            info["compile_fallback_reason"] = f"{name}: {type(exc).__name__}: {str(exc)[:300]}"
            torch._dynamo.reset()
            continue
        info["compile_backend"] = name
        info["compile_dynamic"] = dynamic
        info["compile_first_call_s"] = time.perf_counter() - start
        return fn
    pytest.skip(f"torch.compile failed with {backend} and aot_eager: {info['compile_fallback_reason']}")


def test_sampler_step(benchmark, request, case, shape, dtype_name, provider):
    """Time one fused sampler step for (case, shape, dtype) with `provider`."""
    config = request.config
    device, dtype = fb.runnable_or_skip(config, provider, dtype_name)
    spec = fb.CASES[case]
    shape = fb.bandwidth_shape(dtype) if shape == "bw" else tuple(shape)
    label = fb.shape_str(shape)
    generator = torch.Generator(device=device).manual_seed(zlib.crc32(f"{case}/{label}/{dtype_name}".encode()))
    make = lambda: spec.make_inputs(shape, dtype, device, generator)  # noqa: E731
    sample = make()
    moved = fb.bytes_moved(spec, shape, dtype)

    benchmark.group = f"{case} | {label} | {dtype_name}"
    info = benchmark.extra_info
    info.update(suite="step", provider=provider, case=case, shape=label, dtype=dtype_name, device=device,
                bytes_moved=moved, bandwidth_size=bool(request.node.callspec.params["shape"] == "bw"))

    if provider == "compile":
        fn = _compiled_call(spec, compile_backend(config), sample, info,
                            dynamic=True if device == "cuda" else None)
    else:
        fn = lambda d: spec.public(d, provider)  # noqa: E731
        try:
            fn(sample)
        except (BackendUnavailableError, ModuleNotFoundError, NotImplementedError) as exc:
            pytest.skip(f"{provider}: {type(exc).__name__}: {exc}")

    if smoke_mode(config):
        benchmark(fn, sample)
        return
    fb.measure(benchmark, fn, sample, device=device, make=make, set_bytes=moved)


def test_copy_bandwidth(benchmark, request):
    """Device-to-device copy of a 512 MB tensor: the memory-bound floor every step is reported against."""
    if request.config.getoption("--bench-device") != "cuda":
        pytest.skip("copy bandwidth is measured on CUDA only")
    if not torch.cuda.is_available():
        pytest.skip("--bench-device cuda but no CUDA device is visible")
    src = torch.randn(128 * 2**20, device="cuda")
    dst = torch.empty_like(src)
    moved = 2 * src.numel() * src.element_size()  # bytes read + bytes written
    benchmark.group = "copy bandwidth"
    benchmark.extra_info.update(suite="copy", provider="copy", case="copy", shape=fb.shape_str(src.shape),
                                dtype="float32", device="cuda", bytes_moved=moved)
    call = lambda: dst.copy_(src)  # noqa: E731
    if smoke_mode(request.config):
        benchmark(call)
        return
    median = fb.measure(benchmark, lambda _: call(), None, device="cuda")
    benchmark.extra_info["bandwidth_GBps"] = moved / median / 1e9
