"""GEGLU (Shazeer 2020; diffusers' `GEGLU` after its projection): out = h·GELU(g) with (h, g) = x.chunk(2, -1),
forward and forward + backward, for every provider: `reference` is diffusers' eager sequence (chunk, F.gelu,
multiply), `compile` its torch.compile, and the fused cpu / cuda / triton backends of fastdiff.ops.geglu.

Shapes: Stable Diffusion 1.5's feed-forward at 64x64 latents (x [2, 4096, 2·1280], the 4096-token level), an
SDXL-like one ([2, 1024, 2·5120], GPU), a CPU-friendly [2, 1024, 2·1280] and a tiny-model one ([2, 64, 2·32],
where the per-call overhead is the whole cost).

Run through `benchmarks/run.py`-style options (--benchmark-enable, --bench-device, --bench-full), or as a quick
check: `python -m pytest benchmarks/bench_geglu.py --benchmark-disable -q` (each benchmark once, smallest size).
"""
from __future__ import annotations

import itertools
import zlib

import fastdiff_bench as fb
import torch
import torch.nn.functional as F
from conftest import compile_backend

from fastdiff import ops

DIRECTIONS = ("fwd", "fwdbwd")
CPU_POINTS = (((2, 4096, 2 * 1280), "float32"), ((2, 1024, 2 * 1280), "float32"), ((2, 64, 2 * 32), "float32"))
GPU_FULL = [(shape, dt) for shape, dt in itertools.product(
    ((2, 4096, 2 * 1280), (2, 1024, 2 * 5120), (2, 64, 2 * 32)), ("float16", "bfloat16", "float32"))]
GPU_DEFAULT = [p for p in GPU_FULL if p[1] != "float32"]


def eager_geglu(x):
    """diffusers' GEGLU after its projection: hidden_states, gate = x.chunk(2, -1); hidden_states * F.gelu(gate)."""
    hidden_states, gate = x.chunk(2, dim=-1)
    return hidden_states * F.gelu(gate)


def pytest_generate_tests(metafunc):
    if "provider" not in metafunc.fixturenames:
        return
    points = fb.op_points(metafunc.config, CPU_POINTS, GPU_DEFAULT, GPU_FULL)
    params, ids = [], []
    for (shape, dtype), direction, provider in itertools.product(points, DIRECTIONS, fb.PROVIDERS):
        params.append((shape, dtype, direction, provider))
        ids.append(f"geglu-{fb.shape_str(shape)}-{dtype}-{direction}-{provider}")
    metafunc.parametrize("shape,dtype_name,direction,provider", params, ids=ids)


def _forward(provider, config, info):
    if provider == "reference":
        return eager_geglu
    if provider == "compile":
        backend = compile_backend(config)
        info["compile_backend"] = backend
        return fb.compile_reference(eager_geglu, backend, dynamic=None)
    return lambda x: ops.geglu(x, backend=provider)


def test_geglu(benchmark, request, shape, dtype_name, direction, provider):
    """Time GEGLU for (shape, dtype, direction) with `provider`."""
    config = request.config
    device, dtype = fb.runnable_or_skip(config, provider, dtype_name)
    label = fb.shape_str(shape)
    generator = torch.Generator(device=device).manual_seed(zlib.crc32(f"geglu/{label}/{dtype_name}".encode()))
    out_shape = shape[:-1] + (shape[-1] // 2,)
    make = lambda: {"x": fb._randn(shape, dtype, device, generator), "g": fb._randn(out_shape, dtype, device,
                                                                                    generator)}
    sample = make()
    out_bytes = torch.Size(out_shape).numel() * torch.empty(0, dtype=dtype).element_size()
    # fwd: x (2 output sizes) in, out written; fwd+bwd adds x and grad in, dx (2 output sizes) out
    moved = 3 * out_bytes if direction == "fwd" else 8 * out_bytes
    benchmark.group = f"geglu | {label} | {dtype_name} | {direction}"
    info = benchmark.extra_info
    info.update(suite="geglu", provider=provider, case=f"geglu_{direction}", shape=label, dtype=dtype_name,
                device=device, bytes_moved=moved)
    fwd = _forward(provider, config, info)

    def run(d):
        if direction == "fwd":
            with torch.no_grad():
                return fwd(d["x"])
        x = d["x"].detach().requires_grad_()
        return torch.autograd.grad(fwd(x), x, d["g"])

    fb.time_op(benchmark, config, provider, run, sample, device=device, make=make, moved=moved, info=info)
