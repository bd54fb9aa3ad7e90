"""adaLN modulate (DiT §3.2, adaLN-Zero): out = LayerNorm(h)·(1 + scale) + shift, per-sample scale / shift, forward
and forward + backward, plain (`adaln`: h = x) and gated (`adaln_gated`: h = residual + gate·x first, as DiT / SD3 /
Flux blocks do before norm2). `reference` is diffusers' eager sequence (AdaLayerNormZero: F.layer_norm(x, (D,),
eps=1e-6) * (1 + scale[:, None]) + shift[:, None], the block's `h = residual + gate[:, None] * x` before it),
`compile` its torch.compile, and the fused cpu / cuda / triton backends of fastdiff.ops.adaln_modulate.

Run through `benchmarks/run.py`-style options (--benchmark-enable, --bench-device, --bench-full), or as a quick
check: `python -m pytest benchmarks/bench_adaln_modulate.py --benchmark-disable -q` (each benchmark once, smallest
size).
"""
from __future__ import annotations

import itertools
import zlib

import fastdiff_bench as fb
import torch
import torch.nn.functional as F
from conftest import compile_backend

from fastdiff import ops

EPS = 1e-6
DIRECTIONS = ("fwd", "fwdbwd")
CASES = ("adaln", "adaln_gated")
# DiT-XL/2 at 256² (256 tokens of 1152), a mid-size CPU point, and a tiny patched test model's [2, 64, 32] (where
# the per-call overhead is what counts).
CPU_POINTS = (((2, 256, 1152), "float32"), ((2, 128, 384), "float32"), ((2, 64, 32), "float32"),
              ((2, 256, 1152), "bfloat16"))
# The GPU grid: DiT-XL (B 2 and 8 at 256 tokens), PixArt-ish 1024 tokens of 1152, Flux's 4096 tokens of 3072.
GPU_FULL = [(s, dt) for s, dt in itertools.product(((2, 256, 1152), (8, 256, 1152), (2, 1024, 1152),
                                                    (1, 4096, 3072)), ("float16", "bfloat16"))]
GPU_DEFAULT = [p for p in GPU_FULL if p[1] == "bfloat16"]


def eager_adaln(x, scale, shift):
    """diffusers' AdaLayerNormZero modulation: norm(x) * (1 + scale[:, None]) + shift[:, None]."""
    return F.layer_norm(x, (x.shape[-1],), eps=EPS) * (1 + scale[:, None]) + shift[:, None]


def eager_adaln_gated(x, scale, shift, residual, gate):
    """A DiT / SD3 / Flux block's gated residual, then norm2's modulation."""
    h = residual + gate[:, None] * x
    return h, eager_adaln(h, scale, shift)


def pytest_generate_tests(metafunc):
    if "provider" not in metafunc.fixturenames:
        return
    points = fb.op_points(metafunc.config, CPU_POINTS, GPU_DEFAULT, GPU_FULL, slice(-2, -1))
    params, ids = [], []
    for (shape, dtype), case, direction, provider in itertools.product(points, CASES, DIRECTIONS, fb.PROVIDERS):
        params.append((shape, dtype, case, direction, provider))
        ids.append(f"{case}-{fb.shape_str(shape)}-{dtype}-{direction}-{provider}")
    metafunc.parametrize("shape,dtype_name,case,direction,provider", params, ids=ids)


def _inputs(shape, dtype, device, generator):
    b, _, d = shape
    return {"x": fb._randn(shape, dtype, device, generator), "scale": fb._randn((b, d), dtype, device, generator),
            "shift": fb._randn((b, d), dtype, device, generator), "residual": fb._randn(shape, dtype, device, generator),
            "gate": fb._randn((b, d), dtype, device, generator), "g": fb._randn(shape, dtype, device, generator)}


def _forward(case, provider, config, info):
    eager = eager_adaln if case == "adaln" else eager_adaln_gated
    if provider == "reference":
        return eager
    if provider == "compile":
        backend = compile_backend(config)
        info["compile_backend"] = backend
        return fb.compile_reference(eager, backend, dynamic=None)
    if case == "adaln":
        return lambda x, s, sh: ops.adaln_modulate(x, s, sh, eps=EPS, backend=provider)
    return lambda x, s, sh, r, g: ops.adaln_modulate(x, s, sh, eps=EPS, residual=r, gate=g, backend=provider)


def test_adaln_modulate(benchmark, request, shape, dtype_name, case, direction, provider):
    """Time adaLN modulate (case, shape, dtype, direction) with `provider`."""
    config = request.config
    device, dtype = fb.runnable_or_skip(config, provider, dtype_name)
    label = fb.shape_str(shape)
    generator = torch.Generator(device=device).manual_seed(zlib.crc32(f"adaln/{label}/{dtype_name}".encode()))
    make = lambda: _inputs(shape, dtype, device, generator)
    sample = make()
    elems = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
    gated = case == "adaln_gated"
    # fwd: x (+ residual) in, out (+ h) out; the backward reads grad(s), h (+ x) and writes ∂h (+ ∂x).
    moved = (4 if gated else 2) * elems if direction == "fwd" else (10 if gated else 5) * elems
    benchmark.group = f"{case} | {label} | {dtype_name} | {direction}"
    info = benchmark.extra_info
    info.update(suite="adaln_modulate", provider=provider, case=f"{case}_{direction}", shape=label, dtype=dtype_name,
                device=device, bytes_moved=moved)
    fwd = _forward(case, provider, config, info)
    names = ("x", "scale", "shift") + (("residual", "gate") if gated else ())

    def run(d):
        if direction == "fwd":
            with torch.no_grad():
                return fwd(*(d[k] for k in names))
        leaves = [d[k].detach().requires_grad_() for k in names]
        outs = fwd(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return torch.autograd.grad(outs, leaves, [d["g"]] * len(outs))

    fb.time_op(benchmark, config, provider, run, sample, device=device, make=make, moved=moved, info=info)
