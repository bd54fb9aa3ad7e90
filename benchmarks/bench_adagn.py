"""AdaGN (ADM §3): out = SiLU(GroupNorm(x)·(1 + scale) + shift) with 32 groups, forward and forward + backward,
for every provider: `reference` is ADM's eager sequence (F.group_norm in fp32, ·(1 + scale), + shift, F.silu),
`compile` its torch.compile, and the fused cpu / cuda / triton backends of fastdiff.ops.adagn.

`test_groupnorm_silu` times the diffusers sequence instead (ResnetBlock2D's norm + nonlinearity: GroupNorm(32) with
its affine, then SiLU, or GroupNorm alone for act "none"; no per-sample scale / shift): `reference` is eager
`F.silu(F.group_norm(x, 32, w, b, eps))`, in contiguous and channels_last x (the fused kernels read channels_last in
place and return it; torch's GroupNorm returns NCHW on CUDA and copies), at Stable Diffusion's latent sizes, the VAE
decoder's batch-1 512 x 128 x 128 (the GPU target) and the tiny test models' sizes.

Run through `benchmarks/run.py`-style options (--benchmark-enable, --bench-device, --bench-full), or as a quick
check: `python -m pytest benchmarks/bench_adagn.py --benchmark-disable -q` (each benchmark once, smallest size).
"""
from __future__ import annotations

import itertools
import zlib

import fastdiff_bench as fb
import torch
import torch.nn.functional as F
from conftest import compile_backend, smoke_mode

from fastdiff import ops

GROUPS = 32
EPS = 1e-5
DIRECTIONS = ("fwd", "fwdbwd")
CPU_POINTS = (((8, 256, 32, 32), "float32"), ((2, 128, 16, 16), "float32"), ((2, 128, 16, 16), "float16"))
# The GPU grid: B in {1, 8, 32}, C in {128, 256, 512}, H·W in {8², 16², 32², 64²}, fp16/bf16.
# By default one C per B; --bench-full runs all of it.
GPU_FULL = [((b, c, hw, hw), dt) for b, c, hw, dt in itertools.product((1, 8, 32), (128, 256, 512), (8, 16, 32, 64),
                                                                      ("float16", "bfloat16"))]
GPU_DEFAULT = [p for p in GPU_FULL if (p[0][0], p[0][1]) in ((1, 512), (8, 256), (32, 128))]


def eager_adagn(x, weight, bias, scale, shift):
    """ADM's ResBlock sequence with use_scale_shift_norm: GroupNorm32 (fp32), then scale/shift and SiLU."""
    h = F.group_norm(x.float(), GROUPS, weight.float(), bias.float(), EPS)
    h = h * (1 + scale.float()[:, :, None, None]) + shift.float()[:, :, None, None]
    return F.silu(h).to(x.dtype)


def pytest_generate_tests(metafunc):
    if "provider" not in metafunc.fixturenames:
        return
    points = fb.op_points(metafunc.config, CPU_POINTS, GPU_DEFAULT, GPU_FULL)
    params, ids = [], []
    for (shape, dtype), direction, provider in itertools.product(points, DIRECTIONS, fb.PROVIDERS):
        params.append((shape, dtype, direction, provider))
        ids.append(f"adagn-{fb.shape_str(shape)}-{dtype}-{direction}-{provider}")
    metafunc.parametrize("shape,dtype_name,direction,provider", params, ids=ids)


def _inputs(shape, dtype, device, generator):
    n, c = shape[:2]
    return {"x": fb._randn(shape, dtype, device, generator), "w": fb._randn((c,), dtype, device, generator),
            "b": fb._randn((c,), dtype, device, generator), "s": fb._randn((n, c), dtype, device, generator),
            "sh": fb._randn((n, c), dtype, device, generator), "g": fb._randn(shape, dtype, device, generator)}


def _forward(provider, config, info):
    if provider == "reference":
        return eager_adagn
    if provider == "compile":
        backend = compile_backend(config)
        info["compile_backend"] = backend
        return fb.compile_reference(eager_adagn, backend, dynamic=None)
    return lambda x, w, b, s, sh: ops.adagn(x, w, b, GROUPS, EPS, s, sh, act="silu", backend=provider)


def test_adagn(benchmark, request, shape, dtype_name, direction, provider):
    """Time AdaGN+SiLU for (shape, dtype, direction) with `provider`."""
    config = request.config
    device, dtype = fb.runnable_or_skip(config, provider, dtype_name)
    label = fb.shape_str(shape)
    generator = torch.Generator(device=device).manual_seed(zlib.crc32(f"adagn/{label}/{dtype_name}".encode()))
    make = lambda: _inputs(shape, dtype, device, generator)
    sample = make()
    elems = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
    moved = 2 * elems if direction == "fwd" else 5 * elems  # fwd: x in, out; fwd+bwd adds x, grad in, dx out
    benchmark.group = f"adagn | {label} | {dtype_name} | {direction}"
    info = benchmark.extra_info
    info.update(suite="adagn", provider=provider, case=f"adagn_{direction}", shape=label, dtype=dtype_name,
                device=device, bytes_moved=moved)
    fwd = _forward(provider, config, info)

    def run(d):
        if direction == "fwd":
            with torch.no_grad():
                return fwd(d["x"], d["w"], d["b"], d["s"], d["sh"])
        leaves = [d[k].detach().requires_grad_() for k in ("x", "w", "b", "s", "sh")]
        return torch.autograd.grad(fwd(*leaves), leaves, d["g"])

    fb.time_op(benchmark, config, provider, run, sample, device=device, make=make, moved=moved, info=info)


# GroupNorm(32) (+ SiLU) as diffusers calls it. CPU: SD's UNet latents (64², 32², 16², 8² at 320 ... 1280 channels,
# batch 1 and 2 = classifier-free guidance), the VAE decoder's 1 x 512 x 128², the tiny test models' maps; by default
# three of them with SiLU, --bench-full all with both activations. GPU: the VAE decoder's batch-1 512 x 128 x 128
# (the design target: channels_last + SiLU >= 3x eager on an H100) and a latent, fp16 / bf16.
GN_CPU_FULL = ((1, 320, 64, 64), (2, 320, 64, 64), (2, 640, 32, 32), (2, 1280, 16, 16), (2, 1280, 8, 8),
               (1, 512, 128, 128), (2, 32, 16, 16), (2, 64, 8, 8), (1, 128, 4, 4))
GN_CPU_DEFAULT = ((2, 320, 64, 64), (2, 1280, 8, 8), (2, 32, 16, 16))
GN_GPU = ((1, 512, 128, 128), (2, 320, 64, 64))
LAYOUTS = ("contiguous", "channels_last")


def eager_groupnorm(act):
    """diffusers' ResnetBlock2D: self.norm (nn.GroupNorm(32, C, eps)) then self.nonlinearity (SiLU)."""
    if act == "silu":
        return lambda x, w, b: F.silu(F.group_norm(x, GROUPS, w, b, EPS))
    return lambda x, w, b: F.group_norm(x, GROUPS, w, b, EPS)


def _gn_points(config):
    full = config.getoption("--bench-full")
    if config.getoption("--bench-device") == "cuda":
        points = [(s, dt, act) for s in GN_GPU for dt in ("float16", "bfloat16") for act in ("silu",)]
    else:
        points = [(s, "float32", act) for s in (GN_CPU_FULL if full else GN_CPU_DEFAULT)
                  for act in (("silu", "none") if full else ("silu",))]
    if smoke_mode(config) and not full:
        points = points[-1:]
    return points


def pytest_generate_tests_groupnorm(metafunc):
    params, ids = [], []
    for (shape, dtype, act), layout, direction, provider in itertools.product(
            _gn_points(metafunc.config), LAYOUTS, DIRECTIONS, fb.PROVIDERS):
        params.append((shape, dtype, act, layout, direction, provider))
        ids.append(f"groupnorm-{fb.shape_str(shape)}-{dtype}-{act}-{layout}-{direction}-{provider}")
    metafunc.parametrize("gn_shape,gn_dtype,gn_act,gn_layout,gn_direction,gn_provider", params, ids=ids)


_adagn_generate = pytest_generate_tests


def pytest_generate_tests(metafunc):  # noqa: F811 (both tests of this file)
    if "gn_provider" in metafunc.fixturenames:
        pytest_generate_tests_groupnorm(metafunc)
    else:
        _adagn_generate(metafunc)


def test_groupnorm_silu(benchmark, request, gn_shape, gn_dtype, gn_act, gn_layout, gn_direction, gn_provider):
    """Time GroupNorm(32) (+ SiLU) for (shape, dtype, act, layout, direction) with `provider`."""
    config = request.config
    shape, act, layout, direction, provider = gn_shape, gn_act, gn_layout, gn_direction, gn_provider
    device, dtype = fb.runnable_or_skip(config, provider, gn_dtype)
    label = fb.shape_str(shape)
    generator = torch.Generator(device=device).manual_seed(zlib.crc32(f"groupnorm/{label}/{gn_dtype}".encode()))
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def make():
        c = shape[1]
        x = fb._randn(shape, dtype, device, generator).contiguous(memory_format=fmt)
        g = fb._randn(shape, dtype, device, generator).contiguous(memory_format=fmt)
        return {"x": x, "w": fb._randn((c,), dtype, device, generator), "b": fb._randn((c,), dtype, device, generator),
                "g": g}

    sample = make()
    elems = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
    moved = 2 * elems if direction == "fwd" else 5 * elems
    benchmark.group = f"groupnorm+{act} | {label} | {gn_dtype} | {layout} | {direction}"
    info = benchmark.extra_info
    info.update(suite="adagn", provider=provider, case=f"groupnorm_{act}_{layout}_{direction}", shape=label,
                dtype=gn_dtype, device=device, bytes_moved=moved, layout=layout, act=act)
    if provider == "reference":
        fwd = eager_groupnorm(act)
    elif provider == "compile":
        info["compile_backend"] = compile_backend(config)
        fwd = fb.compile_reference(eager_groupnorm(act), info["compile_backend"], dynamic=None)
    else:
        fwd = lambda x, w, b: ops.adagn(x, w, b, GROUPS, EPS, act=act, backend=provider)

    def run(d):
        if direction == "fwd":
            with torch.no_grad():
                return fwd(d["x"], d["w"], d["b"])
        leaves = [d[k].detach().requires_grad_() for k in ("x", "w", "b")]
        return torch.autograd.grad(fwd(*leaves), leaves, d["g"])

    fb.time_op(benchmark, config, provider, run, sample, device=device, make=make, moved=moved, info=info)
