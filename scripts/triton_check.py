"""Compile every Triton kernel of fastdiff ahead of time for real GPUs, with no GPU present (`make triton-check`).

The Triton interpreter, which runs the kernels in the test suite on CPU, accepts code a GPU compiler rejects
(loop-carried dtype changes, unsupported dot shapes, over-large tiles). This script finds out what the launchers
really compile: it drives every launcher in `fastdiff.triton_kernels` over a grid of inputs (dtypes, shapes and
option values) with the interpreter off, captures each launch instead of running it, derives the kernel's
specialisation exactly as Triton's JIT would on a GPU (signature, constexprs, 16-byte alignment attributes, launch
options), and compiles each distinct one with `triton.compile` for every target (below). ptxas's own
report gives registers and spills; the compiled metadata the shared memory; the PTX whether Hopper code uses wgmma.

    python scripts/triton_check.py [--arch 80 86 89 90] [--jobs 2] [--json out.json] [--kernel NAME ...] [--list]

The grid covers every value of every constexpr a launcher can choose and every dtype it accepts (fp32, fp16,
bf16, fp64): the full feature set (guidance, history slots, learned variance, noise, D output) at every tile class
of the elementwise kernels in every dtype, each option value once, and the attention kernels at every
head-dimension tile (16 to 256) in every dtype, in both layouts that launch them (guided-diffusion's qkv and
diffusers' q, k, v).

Targets: sm_80 and sm_90 for every kernel; sm_86 and sm_89 (whose 99 KiB of shared memory per block is the
smallest) for the attention kernels, the only ones that stage tiles in shared memory (the elementwise kernels use
at most 4 KiB).

Exit status 1 on any compile error; on shared memory above a target's per-block limit (such a launch fails on
that GPU); on any spill in the elementwise kernels (the step, q_sample, posterior, randn and AdaGN kernels move a
few values per thread: a spill there is a defect); on attention spills above ATTENTION_SPILL_BYTES; and on an
approximate PTX instruction (sqrt.approx, div.full, a bare ex2.approx, ...) in the kernels of the sampling
path (EXACT_MATH), whose noise must be the CUDA kernels' bit for bit (docs/architecture.md, "One noise stream").

Uses Triton's JIT internals (`create_function_from_signature`, `JITFunction._pack_args`) so the specialisation is
the JIT's own; triton is pinned (pyproject.toml) to the version this was written against.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import re
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature
from tqdm import tqdm

# Largest dynamic shared memory per block (bytes), from the CUDA programming guide's compute-capability table.
SMEM_LIMIT = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448}
ELEMENTWISE_ARCHS = (80, 90)
# ptxas spill stores + loads per thread allowed in the flash-attention kernels. Their loops keep an fp32
# accumulator tile and the softmax state in registers at up to 255 per thread; a few spilled values (tens of bytes
# per thread, reloaded from L1) cost little next to the tile loads, while the configurations this check replaced
# spilled 2-312 KB per thread (whole tiles through local memory, and the kernel bound by it). The chosen tiles
# spill at most 524 B (fp16/bf16 dK/dV at BLOCK_D 64 in diffusers' layout on sm_80; 352 B in the qkv layout);
# 1 KiB flags any tile that goes back to spilling whole rows.
ATTENTION_SPILL_BYTES = 1024
ELEMENTWISE = ("_sampler_step_kernel", "_q_sample_kernel", "_posterior_kernel", "_randn_kernel", "_stats_kernel",
               "_apply_kernel", "_bwd_sums_kernel", "_bwd_dx_kernel", "_adaln_fwd_kernel", "_adaln_bwd_kernel",
               "_stats_nsc_kernel", "_finalize_nsc_kernel", "_apply_nsc_kernel", "_bwd_sums_nsc_kernel",
               "_bwd_dx_nsc_kernel", "_geglu_kernel", "_geglu_bwd_kernel")
#: Kernels that read and write only statistics buffers in the accumulation dtype (fp32, or fp64 for fp64 inputs):
#: their specialisations are those two dtypes whatever the storage dtype.
ACCUMULATION_ONLY = ("_finalize_nsc_kernel",)
#: Kernels of the sampling path: their fp32 math is the CUDA kernels' (correctly rounded sqrt and division,
#: libdevice's expf / logf / cosf), so a seed draws the same noise on both. Triton lowers tl.sqrt, `/` and tl.exp to
#: the PTX approximations below; libdevice's expf uses ex2.approx.ftz only after an exact range reduction, so the
#: bare (non-ftz) ex2.approx.f32 is tl.exp's.
EXACT_MATH = ("_sampler_step_kernel", "_randn_kernel", "_q_sample_kernel", "_posterior_kernel")
APPROXIMATIONS = re.compile(r"\b(sqrt\.approx|rsqrt\.approx|rcp\.approx|div\.approx|div\.full|ex2\.approx\.f32|"
                            r"lg2\.approx\.f32|sin\.approx|cos\.approx)")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ------------------------------------------------------------------------------------------- capturing launches

@dataclass
class Launch:
    """One captured `kernel[grid](*args, **kwargs)`."""
    fn: JITFunction
    args: tuple
    kwargs: dict
    case: str


_captured: list[Launch] = []
_case = ["?"]


def _capture(self, *args, grid, warmup, **kwargs):
    _captured.append(Launch(self, args, dict(kwargs), _case[0]))


@contextlib.contextmanager
def case(name: str):
    _case[0] = name
    yield


def _randn(shape, dtype):
    return torch.randn(shape, dtype=torch.float32).to(dtype)


# Tile classes of the elementwise kernels (fastdiff.triton_kernels._launch.Tiling): an image row over 1024-wide
# blocks, 2-D toy data (512 rows of 2 values), a lone tiny sample (one warp, N = 1), and an odd row length (no
# 16-element alignment, so no vectorised access).
SHAPES = {"img": (2, 3, 32, 32), "toy": (512, 2), "tiny": (1, 4, 4), "odd": (3, 5, 7)}


def _coefs(dtype):
    from fastdiff.ops import step_table
    return step_table(np.linspace(1e-4, 0.02, 1000), "cpu", torch.float64 if dtype == torch.float64 else torch.float32)


def _step_table(table_dtype, rows: int = 8):
    """A [rows, STEP_NCOL] sampler step table (fastdiff.ops.sampler_step) with every term in use: guidance,
    clipping, all history slots read and written, noise with both log-variance ends."""
    from fastdiff.ops import table as T
    table = torch.rand(rows, T.STEP_NCOL, dtype=torch.float64) + 0.1
    table[:, T.WRITE_D], table[:, T.WRITE_X] = 0, T.MAX_HISTORY - 1
    table[:, T.LOGVAR_HI], table[:, T.LOGVAR_LO] = -3.0, -4.0
    return table.to(table_dtype)


def drive_sampler_step():
    """sampler_step: the full feature set (guidance, MAX_HISTORY slots, learned-range variance, Philox noise, D
    output) at every tile class in every dtype, and every other value of each constexpr once (one at a time from
    the full set) at the image tile in every dtype: 0..MAX_HISTORY-1 slots, var modes 0 and 1, noise from a tensor,
    a device seed or none (which also sets var mode 0: σ_var only scales noise), no guidance, no D, and the other
    table dtype (the op takes a float32 or float64 table with any x)."""
    from fastdiff.ops import table as T
    from fastdiff.triton_kernels.sampler_step import sampler_step
    for dtype in DTYPES:
        table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        table = _step_table(table_dtype)
        for shape_name, shape in SHAPES.items():
            x = _randn(shape, dtype)
            full = dict(model_output=torch.cat([x, x], 1), model_output_uncond=x.clone(),
                        history=torch.zeros((T.MAX_HISTORY,) + shape, dtype=dtype), var_mode=2, noise=None, seed=7,
                        return_denoised=True, seed_tensor=None)
            variants = {"full": {}}
            if shape_name == "img":
                variants.update({f"history={k}": dict(history=full["history"][:k] if k else None)
                                 for k in range(T.MAX_HISTORY)})
                variants.update({
                    "var=table": dict(var_mode=0, model_output=x.clone()), "var=learned": dict(var_mode=1),
                    "noise=tensor": dict(noise=x.clone(), seed=-1), "noise=none": dict(seed=-1),
                    "seed=tensor": dict(seed=-1, seed_tensor=torch.tensor([5])),
                    "nocfg": dict(model_output_uncond=None), "noD": dict(return_denoised=False),
                    "table=other": dict(table=_step_table(
                        torch.float32 if table_dtype == torch.float64 else torch.float64))})
            for vname, change in variants.items():
                a = {"table": table, **full, **change}
                with case(f"sampler_step {shape_name} {vname}"):
                    sampler_step(x, a["model_output"], a["model_output_uncond"], a["table"],
                                 torch.randint(0, a["table"].shape[0], (shape[0],)), a["history"], a["var_mode"],
                                 a["noise"], a["seed"], 0, a["return_denoised"], a["seed_tensor"])


def drive_table_kernels():
    """q_sample, posterior_mean_variance and randn_like: every dtype at every tile class."""
    from fastdiff.triton_kernels.posterior_mean_variance import posterior_mean_variance
    from fastdiff.triton_kernels.q_sample import q_sample
    from fastdiff.triton_kernels.randn_like import randn_like
    for dtype in DTYPES:
        coefs = _coefs(dtype)
        for shape in SHAPES.values():
            x, t = _randn(shape, dtype), torch.randint(0, 1000, (shape[0],))
            with case(f"q_sample {shape}"):
                q_sample(x, x.clone(), coefs, t)
            with case(f"posterior {shape}"):
                posterior_mean_variance(x, x.clone(), coefs, t)
        with case("randn_like"):
            randn_like(_randn(SHAPES["img"], dtype), 3, 0)


def drive_adagn():
    """AdaGN forward and backward at ADM's shapes (64x64 with 128 channels, 8x8 with 512, a 4x4 batch of 1) in
    every dtype with scale, shift and SiLU; without them (each option value) in fp32."""
    from fastdiff.triton_kernels.adagn import adagn, adagn_backward
    for dtype in DTYPES:
        for n, c, hw in ((2, 128, 64), (16, 512, 8), (1, 64, 4)):
            x = _randn((n, c, hw, hw), dtype)
            w, b = torch.ones(c, dtype=dtype), torch.zeros(c, dtype=dtype)
            options = [(True, True)]
            if dtype == torch.float32 and hw == 64:
                options += [(False, True), (True, False), (False, False)]
            for affine, silu in options:
                scale = shift = _randn((n, c), dtype) if affine else None
                with case(f"adagn {(n, c, hw, hw)} affine={affine} silu={silu}"):
                    out, mean, rstd = adagn(x, w, b, scale, shift, 32, 1e-5, silu)
                    adagn_backward(x.clone(), x, w, b, scale, shift, mean, rstd, 32, silu)
        # channels-last x ([N, S, C] kernels): the VAE decoder's 512 channels at 128x128, batch 1; 320 channels
        # (C/G = 10, not a power of two) at 32x32
        for n, c, hw in ((1, 512, 128), (2, 320, 32)):
            x = _randn((n, c, hw, hw), dtype).contiguous(memory_format=torch.channels_last)
            w, b = torch.ones(c, dtype=dtype), torch.zeros(c, dtype=dtype)
            scale = shift = _randn((n, c), dtype)
            with case(f"adagn channels_last {(n, c, hw, hw)}"):
                out, mean, rstd = adagn(x, w, b, scale, shift, 32, 1e-5, True)
                adagn_backward(x.clone(), x, w, b, scale, shift, mean, rstd, 32, True)


def drive_attention():
    """Attention forward and backward at every head-dimension tile, in every dtype the launcher takes it in."""
    from fastdiff.triton_kernels.qkv_attention import attention_backward, attention_forward, unsupported
    for dtype in DTYPES:
        for d in (16, 32, 64, 128, 160):  # BLOCK_D 16, 32, 64, 128, 256 (160: Stable Diffusion's deepest level)
            if unsupported(d, dtype):  # fastdiff.ops.qkv_attention never sends it to these kernels
                continue
            heads, t = 2, 256
            qkv = _randn((2, 3 * heads * d, t), dtype)
            with case(f"attention d={d}"):
                out, lse = attention_forward(qkv, heads, True)
                attention_backward(qkv, out, lse, out.clone(), heads, True)


def drive_diffusers_attention():
    """fastdiff.ops.attention's launches of the same kernels in diffusers' layout (q from a fused qkv projection's
    chunk, k and v from a fused kv projection, Lq = 256 and Lk = 77; unit-stride channels instead of positions) at
    every head-dimension tile (d = 8, 24, 40, 80, 160: BLOCK_D 16 to 256; 40, 80, 160 are Stable Diffusion's), in
    every dtype the launcher takes."""
    from fastdiff.triton_kernels.attention import attention_backward, attention_forward, unsupported
    for dtype in DTYPES:
        for d in (8, 24, 40, 80, 160):
            if unsupported(d, dtype):
                continue
            heads, lq, lk = 2, 256, 77
            q = _randn((2, lq, 3 * heads * d), dtype).chunk(3, -1)[0]
            k, v = _randn((2, lk, 2 * heads * d), dtype).chunk(2, -1)
            with case(f"attention (diffusers) d={d}"):
                out, lse = attention_forward(q, k, v, heads, d ** -0.5)
                attention_backward(q, k, v, out, lse, out.clone(), heads, d ** -0.5)




def drive_adaln_modulate():
    """adaLN modulate forward and backward at DiT-XL's D = 1152, Flux's 3072, a tiny model's 32 (several rows per
    tile) and an odd 37 (no 16-byte alignment), in every dtype with the full feature set (gated residual, LayerNorm
    with weight and bias, per-sample scale / shift, grad_h); in fp32 at 1152 also RMSNorm, per-token scale / shift /
    gate, and no optional argument at all."""
    from fastdiff.triton_kernels.adaln_modulate import adaln_modulate, adaln_modulate_backward
    for dtype in DTYPES:
        for b, l, d in ((2, 256, 1152), (1, 64, 3072), (2, 64, 32), (3, 5, 37)):
            x, r = _randn((b, l, d), dtype), _randn((b, l, d), dtype)
            w, bias, per_sample, per_token = _randn((d,), dtype), _randn((d,), dtype), _randn((b, d), dtype), \
                _randn((b, l, d), dtype)
            variants = {"full": (per_sample, per_sample, w, bias, r, per_sample, False)}
            if dtype == torch.float32 and d == 1152:
                variants.update({"rms": (per_sample, per_sample, w, None, r, per_sample, True),
                                 "per_token": (per_token, per_token, w, bias, r, per_token, False),
                                 "bare": (None, None, None, None, None, None, False)})
            for name, (s, sh, ww, bb, res, g, rms) in variants.items():
                with case(f"adaln_modulate {(b, l, d)} {name}"):
                    out, h, mean, rstd = adaln_modulate(x, s, sh, ww, bb, res, g, rms, 1e-6)
                    hn = h if g is not None else x
                    adaln_modulate_backward(out.clone(), out.clone() if g is not None else None, hn,
                                            x if g is not None else None, g, s, sh, ww, bb, mean, rstd, rms)




def drive_geglu():
    """GEGLU forward and backward in every dtype, both GELU forms, at SD 1.5's feed-forward (F = 1280, a
    1024-wide tile), a tiny model's F = 32 (several rows per tile), an odd F = 37 (no 16-byte alignment) and a
    row-strided view (x[..., :2F] of wider rows)."""
    from fastdiff.triton_kernels.geglu import geglu, geglu_backward
    for dtype in DTYPES:
        for shape in ((2, 64, 2 * 1280), (2, 64, 2 * 32), (3, 5, 2 * 37)):
            for approximate in ("none", "tanh"):
                x = _randn(shape, dtype)
                with case(f"geglu {shape} {approximate}"):
                    out = geglu(x, approximate)
                    geglu_backward(out.clone(), x, approximate)
        with case("geglu row-strided"):
            geglu(_randn((4, 2 * 40 + 8), dtype)[:, :80], "none")


DRIVERS = (drive_sampler_step, drive_table_kernels, drive_adagn, drive_attention, drive_diffusers_attention,
           drive_adaln_modulate, drive_geglu)


def capture() -> list[Launch]:
    """Every launch the drivers make, with JITFunction.run replaced by a recorder for the duration."""
    run = JITFunction.run
    JITFunction.run = _capture
    try:
        for drive in DRIVERS:
            drive()
    finally:
        JITFunction.run = run
    return list(_captured)


# --------------------------------------------------------------------------------------------------- compiling

@dataclass
class Variant:
    kernel: str
    spec: str      # the constexprs and pointer dtypes, short
    arch: int
    case: str      # the first input case that reached it
    ok: bool = True
    error: str = ""
    registers: int = -1
    spill_bytes: int = -1   # spill stores + spill loads
    stack: int = -1
    shared: int = -1
    wgmma: bool = False
    approx: str = ""  # the approximate PTX instructions of the kernel, comma-separated (EXACT_MATH kernels only)
    seconds: float = 0.0


def _short(v) -> str:
    s = str(v.value if hasattr(v, "value") and not isinstance(v, (int, bool)) else v)
    return s.replace("triton.language.", "").replace("float", "fp")


def specialise(launch: Launch, target: GPUTarget):
    """(signature, constexprs, attrs, options) exactly as the JIT derives them for `target`."""
    backend = make_backend(target)
    binder = create_function_from_signature(launch.fn.signature, launch.fn.params, backend)
    bound, spec, opts = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = launch.fn._pack_args(backend, launch.kwargs, bound, spec, opts)
    return signature, constexprs, attrs, options


def describe(launch: Launch, signature, constexprs, options) -> str:
    names = launch.fn.arg_names
    consts = [f"{names[k[0]]}={_short(v)}" for k, v in sorted(constexprs.items()) if len(k) == 1]
    ptrs = sorted({v[1:] for v in signature.values() if isinstance(v, str) and v.startswith("*")} - {"i64"})
    extra = [f"w{options.num_warps}"] + ([f"s{options.num_stages}"] if options.num_stages != 3 else [])
    return " ".join(["/".join(ptrs)] + consts + extra)


_PTXAS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads.*?"
                    r"Used (\d+) registers", re.S)


def compile_one(item) -> Variant:
    launch, arch, key = item
    target = GPUTarget("cuda", arch, 32)
    signature, constexprs, attrs, options = key
    v = Variant(launch.fn.__name__, describe(launch, signature, constexprs, options), arch, launch.case)
    start = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(ASTSource(launch.fn, signature, constexprs, attrs), target=target,
                                    options=options.__dict__)
    except Exception as e:  # a compile error of any kind is the finding
        v.ok, v.error = False, f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        v.seconds = time.perf_counter() - start
        return v
    v.seconds = time.perf_counter() - start
    m = _PTXAS.search(log.getvalue())
    if m:
        v.stack, stores, loads, v.registers = (int(g) for g in m.groups())
        v.spill_bytes = stores + loads
    v.shared = int(kernel.metadata.shared)
    ptx = kernel.asm.get("ptx", "")
    v.wgmma = "wgmma" in ptx
    if v.kernel in EXACT_MATH:
        v.approx = ",".join(sorted(set(APPROXIMATIONS.findall(ptx))))
    return v


_WORK: list = []


def _compile_index(i: int) -> tuple[int, Variant]:
    return i, compile_one(_WORK[i])


def plan(launches: list[Launch], archs) -> list:
    """The distinct (launch, arch, specialisation) triples, first-seen order."""
    seen, work = set(), []
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        for launch in launches:
            if launch.fn.__name__ in ELEMENTWISE and arch not in ELEMENTWISE_ARCHS:
                continue
            key = specialise(launch, target)
            signature, constexprs, attrs, options = key
            ident = (launch.fn.__name__, arch, repr(sorted(signature.items())),
                     repr(sorted((k, _short(v)) for k, v in constexprs.items())),
                     repr(sorted(attrs.items())), repr(sorted(options.__dict__.items())))
            if ident not in seen:
                seen.add(ident)
                work.append((launch, arch, key))
    return work


def problems(v: Variant) -> list[str]:
    out = []
    if not v.ok:
        return [f"compile error: {v.error}"]
    if v.shared > SMEM_LIMIT.get(v.arch, min(SMEM_LIMIT.values())):
        out.append(f"{v.shared} bytes of shared memory, over sm_{v.arch}'s {SMEM_LIMIT.get(v.arch)} per block")
    if v.kernel in ELEMENTWISE and v.spill_bytes > 0:
        out.append(f"{v.spill_bytes} bytes of spills in an elementwise kernel")
    elif v.spill_bytes > ATTENTION_SPILL_BYTES:
        out.append(f"{v.spill_bytes} bytes of spills, over the {ATTENTION_SPILL_BYTES} allowed in attention")
    if v.approx:
        out.append(f"approximate math on the sampling path ({v.approx}): its noise would differ from the CUDA kernels'")
    return out


def table(results: list[Variant]) -> str:
    head = "| kernel | specialisation | arch | regs | spills (B) | smem (B) | wgmma | result |"
    rows = [head, "|" + "---|" * 8]
    for v in results:
        wg = ("yes" if v.wgmma else "no") if v.arch >= 90 else "-"
        rows.append(f"| {v.kernel} | {v.spec} | sm_{v.arch} | {v.registers} | {v.spill_bytes} | {v.shared} | {wg} "
                    f"| {'; '.join(problems(v)) or 'ok'} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=[80, 86, 89, 90],
                   help="compute capabilities (default 80 86 89 90; elementwise kernels: 80 and 90 only)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--kernel", nargs="*", help="only these kernels (e.g. _sampler_step_kernel)")
    p.add_argument("--list", action="store_true", help="print the variants (kernel, arch, specialisation), compile none")
    args = p.parse_args(argv)
    if knobs.runtime.interpret:  # @triton.jit would have made interpreter functions: nothing to compile
        sys.exit("triton_check: unset TRITON_INTERPRET; this compiles for GPUs, the interpreter would hide the code")
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report is printed; compile_one captures it
    knobs.compilation.always_compile = True  # a cached kernel would skip ptxas and its report
    start = time.perf_counter()
    launches = capture()
    if args.kernel:
        launches = [launch for launch in launches if launch.fn.__name__ in args.kernel]
    _WORK[:] = plan(launches, args.arch)
    print(f"triton-check: {len(launches)} launches -> {len(_WORK)} variants to compile for "
          f"sm_{'/sm_'.join(map(str, args.arch))} (triton {triton.__version__}, {args.jobs} jobs)", flush=True)
    if args.list:
        for launch, arch, key in _WORK:
            print(f"{launch.fn.__name__}\tsm_{arch}\t{describe(launch, key[0], key[1], key[3])}")
        return 0
    # Attention variants compile up to 10x slower than the elementwise ones: start them first so the pool's
    # workers finish together.
    order = sorted(range(len(_WORK)), key=lambda i: _WORK[i][0].fn.__name__ in ELEMENTWISE)
    results = [None] * len(_WORK)
    progress = tqdm(total=len(_WORK), desc="triton-check", unit="variant", mininterval=15, file=sys.stderr)
    with contextlib.ExitStack() as stack:
        if args.jobs > 1:
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(args.jobs))
            done = pool.imap_unordered(_compile_index, order, chunksize=1)
        else:
            done = map(_compile_index, order)
        for i, v in done:
            results[i] = v
            progress.update()
    progress.close()
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(v) for v in results], f, indent=1)
    failed = [(v, msg) for v in results for msg in problems(v)]
    kernels = sorted({v.kernel for v in results})
    print(f"\ntriton-check: {len(results)} variants of {len(kernels)} kernels compiled in "
          f"{time.perf_counter() - start:.0f} s; {len(failed)} failures")
    for v, msg in failed:
        print(f"  FAIL {v.kernel} [{v.spec}] sm_{v.arch} ({v.case}): {msg}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
