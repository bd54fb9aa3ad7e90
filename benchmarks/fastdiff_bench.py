"""Shared pieces of fastdiff's benchmark suites: providers, cases, sizes, inputs and timing.

The suites (`bench_sampler_step.py`, `bench_sampling_loop.py`) and the report script (`run.py`) import this
module; it holds no pytest state. Timing: on CPU pytest-benchmark's wall clock (median of rounds); on CUDA
`triton.testing.do_bench` (median, after warm-up, L2 flushed) or CUDA events, over inputs rotated so the
working set exceeds the L2 cache.
"""
from __future__ import annotations

import importlib
import itertools
import math
import time
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from fastdiff import ops
from fastdiff.schedules import get_named_beta_schedule

PROVIDERS = ("reference", "compile", "cpu", "cuda", "triton")
FUSED = ("cpu", "cuda", "triton")
NUM_TIMESTEPS = 1000
L2_BYTES_MIN = 50 * 2**20  # rotate inputs past this (H100: 50 MB L2), or past the device's L2 if larger
BANDWIDTH_TENSOR_BYTES = 256 * 2**20  # the GPU-only size used for the bandwidth check: 256 MB per tensor

# CPU defaults keep `make bench` near 10 minutes on 2 cores: the reference draws its Philox noise with ~100
# int64 tensor ops, ~8 s per call at 16x3x256x256, so the largest size runs in fp32 only unless --bench-full.
SIZES = ((2, 4, 64, 64), (8, 3, 128, 128), (16, 3, 256, 256))
CPU_DEFAULT_DTYPES = ("float32", "float16")
CPU_DEFAULT_LARGE_DTYPES = ("float32",)
DTYPES = ("float32", "float16", "bfloat16")

STEP_REF = importlib.import_module("fastdiff.ops.sampler_step").reference


def shape_str(shape) -> str:
    """(8, 3, 128, 128) -> '8x3x128x128'."""
    return "x".join(str(s) for s in shape)


def bandwidth_shape(dtype: torch.dtype) -> tuple[int, ...]:
    """[N, 4, 1024, 1024] with N chosen so one tensor of `dtype` is 256 MB."""
    per_sample = 4 * 1024 * 1024 * torch.empty(0, dtype=dtype).element_size()
    return (BANDWIDTH_TENSOR_BYTES // per_sample, 4, 1024, 1024)


def dtype_supported(dtype: torch.dtype, device: str) -> tuple[bool, str]:
    """Whether `device` handles `dtype` natively (bf16 needs Ampere or newer on CUDA)."""
    if device == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return False, "this GPU has no bfloat16 support"
    return True, ""


def grid(device: str, full: bool, smoke: bool) -> list[tuple[tuple[int, ...] | str, str]]:
    """(shape, dtype name) pairs to benchmark; shape "bw" is the 256 MB-per-tensor size (CUDA only)."""
    sizes = SIZES[:1] if smoke and not full else SIZES
    out = []
    for shape in sizes:
        if device == "cpu" and not full:
            names = CPU_DEFAULT_LARGE_DTYPES if shape == SIZES[-1] else CPU_DEFAULT_DTYPES
        else:
            names = DTYPES
        out += [(shape, name) for name in names]
    if device == "cuda" and not smoke:
        out += [("bw", name) for name in DTYPES]
    return out


@dataclass
class Case:
    """One benchmarked call: how to build its inputs, run each provider, and how many tensors it moves."""
    name: str
    op: str                # fastdiff.ops name; also the triton_kernels module
    tensors_moved: int     # x-sized tensors read + written (each input read once, each output written once)
    make_inputs: Callable  # (shape, dtype, device, generator) -> dict of tensors
    public: Callable       # (inputs, backend) -> x_prev through the public op
    reference: Callable    # the plain reference function compile wraps
    reference_args: Callable  # inputs -> positional args of `reference`


def _coefs(device) -> torch.Tensor:
    return ops.step_table(get_named_beta_schedule("linear", NUM_TIMESTEPS), device=device)


def _t(n: int, device, generator) -> torch.Tensor:
    # Random timestep per sample; t = 0 is excluded so every sample takes the noise branch.
    return torch.randint(1, NUM_TIMESTEPS, (n,), generator=generator, device=generator.device).to(device)


def _randn(shape, dtype, device, generator) -> torch.Tensor:
    # Drawn on the generator's device: 256 MB tensors would take seconds each through the CPU generator.
    x = torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device)
    return x.to(device=device, dtype=dtype)


def _rows(kind: str, device) -> torch.Tensor:
    """The sampler_step table of each case (built once, outside the timed call): DDIM η = 1 with CFG s = 3 and
    learned-range DDPM over the 1000-step linear schedule, DPM-Solver++ 2M over 1000 Karras σ's."""
    from fastdiff.ops.ddim_step import step_rows as ddim_rows
    from fastdiff.ops.ddpm_step import step_rows as ddpm_rows
    from fastdiff.samplers import tables
    from fastdiff.schedules import get_sigmas_karras

    coefs = _coefs(device)
    if kind == "ddim_cfg_noise":
        return ddim_rows(coefs, 1.0, "epsilon", False, 3.0)
    if kind == "ddim":
        return ddim_rows(coefs, 0.0, "epsilon", False, 1.0)
    if kind == "ddpm_learned_range":
        return ddpm_rows(coefs, "epsilon", ops.VAR_TYPES["learned_range"], False, 1.0)
    sigmas = get_sigmas_karras(NUM_TIMESTEPS, 0.03, 14.6)
    return tables.dpmpp_2m(sigmas, space="vp", prediction="epsilon", cfg_scale=3.0).tensor(device)


def _inputs(kind: str, out_channels: int = 1, uncond: bool = False, history: int = 0):
    def make(shape, dtype, device, generator):
        doubled = (shape[0], out_channels * shape[1], *shape[2:])
        d = {"x": _randn(shape, dtype, device, generator), "eps": _randn(doubled, dtype, device, generator),
             "rows": _rows(kind, device), "t": _t(shape[0], device, generator)}
        if uncond:
            d["eps_u"] = _randn(shape, dtype, device, generator)
        if history:
            d["history"] = _randn((history, *shape), dtype, device, generator)
        return d
    return make


SEED, OFFSET = 1234, 7 << 32


def _case(name: str, tensors_moved: int, make_inputs, var_mode: int = 0, noise: bool = True) -> "Case":
    """A case of the one fused step: its public call and its reference's positional arguments."""
    seed = SEED if noise else None

    def public(d, b):
        return ops.sampler_step(d["x"], d["eps"], d["rows"], d["t"], history=d.get("history"), var_mode=var_mode,
                                model_output_uncond=d.get("eps_u"), seed=seed,
                                offset=OFFSET if noise else 0, backend=b)

    def reference_args(d):
        return (d["x"], d["eps"], d.get("eps_u"), d["rows"], d["t"], d.get("history"), var_mode, None,
                SEED if noise else -1, OFFSET if noise else 0, False)
    return Case(name, "sampler_step", tensors_moved, make_inputs, public, STEP_REF, reference_args)


CASES = {
    # The headline: DDIM η = 1 with classifier-free guidance (s = 3) and in-kernel Philox noise.
    # Moves x, ε_c, ε_u (read) and x_{t-1} (written).
    "ddim_cfg_noise": _case("ddim_cfg_noise", 4, _inputs("ddim_cfg_noise", uncond=True)),
    # Deterministic DDIM (η = 0), no guidance: x, ε read, x_{t-1} written.
    "ddim": _case("ddim", 3, _inputs("ddim"), noise=False),
    # Improved-DDPM ancestral step with learned-range variance: x and the 2C-channel output read (3 tensors'
    # worth), x_{t-1} written.
    "ddpm_learned_range": _case("ddpm_learned_range", 4, _inputs("ddpm_learned_range", out_channels=2),
                                var_mode=2),
    # DPM-Solver++ 2M with CFG: x, ε_c, ε_u and the previous D read, x_next and D written (history in place).
    "dpmpp_2m_cfg": _case("dpmpp_2m_cfg", 6, _inputs("dpmpp_2m_cfg", uncond=True, history=1), noise=False),
}


def bytes_moved(case: Case, shape, dtype: torch.dtype) -> int:
    """Bytes the step must move: each input read once, each output written once (t and the table ignored)."""
    return case.tensors_moved * math.prod(shape) * torch.empty(0, dtype=dtype).element_size()


def provider_unavailable(provider: str, device: str) -> str | None:
    """Why `provider` cannot run on `device` (None when it can); never the Triton interpreter."""
    if provider in ("reference", "compile"):
        return None
    if provider == "triton" and device != "cuda":
        return "the triton backend is benchmarked on CUDA tensors only (never the interpreter)"
    if provider == "cpu" and device != "cpu":
        return "the cpu backend takes CPU tensors"
    if provider == "cuda" and device != "cuda":
        return "the cuda backend takes CUDA tensors"
    status = ops.available_backends()[provider]
    return None if status.available else status.reason


def synced_or_skip(fn: Callable[[], object], device: str, provider: str) -> Callable[[], object]:
    """fn wrapped to wait for the device, after one call that skips the test when `provider` cannot run it (backend
    missing, optional package absent, case unsupported)."""
    from fastdiff.ops import BackendUnavailableError

    def run():
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    try:
        run()
    except (BackendUnavailableError, ModuleNotFoundError, NotImplementedError) as exc:
        pytest.skip(f"{provider}: {type(exc).__name__}: {exc}")
    return run


def configure_dynamo() -> None:
    """Allow one compiled graph per (case, dtype, shape class) without hitting Dynamo's recompile limit, which
    would silently fall back to eager and make `compile` look like `reference`."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, 256)
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = 4096


def compile_reference(fn: Callable, backend: str, dynamic: bool | None) -> Callable:
    """torch.compile of a reference function (fullgraph, so a graph break cannot hide eager code).

    dynamic=True (used on CUDA) compiles one graph per case and dtype instead of one per shape, which keeps
    the ~20 s inductor compiles of the Philox graph within `make gpu-check`'s time.
    """
    configure_dynamo()
    return torch.compile(fn, backend=backend, fullgraph=True, dynamic=dynamic)


def rotation_sets(first: dict, make: Callable[[], dict], set_bytes: int, l2_bytes: int) -> list[dict]:
    """`first` plus enough fresh input sets that cycling through them touches more than twice the L2."""
    count = max(1, min(1024, math.ceil(2 * l2_bytes / max(set_bytes, 1))))
    return [first] + [make() for _ in range(count - 1)]


def cuda_l2_bytes() -> int:
    """The visible GPU's L2 size, at least 50 MB (what to rotate past)."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return max(L2_BYTES_MIN, int(getattr(props, "L2_cache_size", 0) or 0))


def cycling(fn: Callable, sets: list) -> Callable[[], object]:
    """A no-argument callable running fn on the next input set each call."""
    it = itertools.cycle(sets)
    return lambda: fn(next(it))


def gpu_median_seconds(call: Callable[[], object]) -> tuple[float, str]:
    """Median time of `call` on the current CUDA stream: triton.testing.do_bench, else CUDA events."""
    try:
        from triton.testing import do_bench
        return do_bench(call, warmup=25, rep=100, return_mode="median") / 1e3, "triton.testing.do_bench"
    except ImportError:
        pass
    for _ in range(5):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(50):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return times[len(times) // 2], "cuda events"


def _union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by [start, end) intervals (overlaps, e.g. concurrent kernels, counted once)."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return total + (cur_end - cur_start if cur_end is not None else 0.0)


#: Chrome-trace categories of device work (kernels, copies, memsets) in a torch.profiler trace.
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def gpu_idle(call: Callable[[], object], replays: int = 3) -> dict:
    """GPU idle time of `call` (e.g. a CUDA graph replay) as a fraction of its wall time, over `replays` calls.

    One torch.profiler (CUPTI) session; each call runs inside a `record_function` range that also records CUDA
    events around it and synchronises, so all its device work falls inside that range. Per call: wall = the
    CUDA-event time from just before `call` to just after it (GPU clock: graph launch latency and gaps included),
    busy = the union of its device intervals (kernels, memcpy, memset). Returns the medians over calls of
    {"gpu_idle_frac": 1 − busy/wall, "gpu_busy_s", "gpu_wall_s", "gpu_idle_frac_span": 1 − busy/(last device end
    − first device start) (gaps between device ops alone), "gpu_device_ops": device ops per call}.
    Raises RuntimeError when the profiler records no device work (CUPTI unavailable).
    """
    import json
    import os
    import tempfile

    from torch.profiler import ProfilerActivity, profile, record_function

    call()
    torch.cuda.synchronize()
    walls = []
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(replays):
            with record_function(f"fastdiff_idle_{i}"):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                call()
                end.record()
                torch.cuda.synchronize()
            walls.append(start.elapsed_time(end) * 1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    return idle_from_trace(trace.get("traceEvents", []) if isinstance(trace, dict) else trace, walls)


def idle_from_trace(events: list[dict], walls: list[float]) -> dict:
    """`gpu_idle`'s figures from chrome-trace events (µs) and the per-call CUDA-event wall times (s): call i's
    device ops are those starting inside its CPU range "fastdiff_idle_<i>"; medians over calls (by idle)."""
    span = lambda e: (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)))  # noqa: E731
    complete = [e for e in events if e.get("ph") == "X"]
    ranges = {e["name"]: span(e) for e in complete if str(e.get("name", "")).startswith("fastdiff_idle_")
              and e.get("cat") != "gpu_user_annotation"}  # the CPU range, not its device-side mirror
    device = [span(e) for e in complete if e.get("cat") in DEVICE_CATEGORIES]
    rows = []
    for i, wall in enumerate(walls):
        lo, hi = ranges.get(f"fastdiff_idle_{i}", (None, None))
        mine = [d for d in device if lo is not None and lo <= d[0] <= hi]
        if not mine:
            raise RuntimeError("torch.profiler recorded no device activity for the call (CUPTI unavailable?): "
                               "cannot measure GPU idle time")
        busy = _union_length(mine) * 1e-6
        extent = (max(e for _, e in mine) - min(s for s, _ in mine)) * 1e-6
        rows.append((1.0 - busy / wall, busy, wall, 1.0 - busy / extent, len(mine)))
    rows.sort()
    idle, busy, wall, idle_span, ops = rows[len(rows) // 2]
    return {"gpu_idle_frac": idle, "gpu_busy_s": busy, "gpu_wall_s": wall, "gpu_idle_frac_span": idle_span,
            "gpu_device_ops": ops}


def synced(call: Callable[[], object], device: str) -> Callable[[], object]:
    """`call` followed by a device synchronisation, so a wall clock measures the work and not the launch."""
    if device != "cuda":
        return call
    def run():
        out = call()
        torch.cuda.synchronize()
        return out
    return run


def plan_rounds(call: Callable[[], object], target_s: float, min_rounds: int, max_rounds: int) -> tuple[int, int]:
    """(rounds, iterations) so the timed part takes about target_s, from one warm call's duration."""
    start = time.perf_counter()
    call()
    once = max(time.perf_counter() - start, 1e-7)
    iterations = max(1, min(100, int(1e-3 / once)))  # sub-millisecond calls: amortise the timer over a batch
    rounds = int(target_s / (once * iterations))
    return max(min_rounds, min(max_rounds, rounds)), iterations


def runnable_or_skip(config, provider: str | None, dtype_name: str | None = None):
    """(device, dtype) of this benchmark run; skips (with the reason) when the device, the provider (None: a peer
    checked by its own suite) or the dtype cannot run here."""
    device = config.getoption("--bench-device")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda but no CUDA device is visible")
    if provider is not None:
        why = provider_unavailable(provider, device)
        if why:
            pytest.skip(f"{provider}: {why}")
    if dtype_name is None:
        return device, None
    dtype = getattr(torch, dtype_name)
    ok, why = dtype_supported(dtype, device)
    if not ok:
        pytest.skip(why)
    return device, dtype


def measure(benchmark, run: Callable, sample, *, device: str, make: Callable[[], object] | None = None,
            set_bytes: int = 0, target_s: float = 1.0, min_rounds: int = 2, max_rounds: int = 50,
            warmup_rounds: int = 0) -> float:
    """Time run(inputs) into `benchmark` (and its extra_info) and return the median seconds of one call.

    CUDA: gpu_median_seconds over `sample` plus sets from make() (set_bytes each) rotated past twice the L2, then 3
    synchronised pytest-benchmark rounds for the JSON. CPU: pytest-benchmark rounds planned to take ~target_s.
    """
    info = benchmark.extra_info
    if device == "cuda":
        sets = rotation_sets(sample, make, set_bytes, cuda_l2_bytes()) if make is not None else [sample]
        call = cycling(run, sets)
        median, timer = gpu_median_seconds(call)
        info.update(median_s=median, timer=timer, rotation_sets=len(sets))
        benchmark.pedantic(synced(call, device), rounds=3, iterations=1, warmup_rounds=1)
        return median
    call = lambda: run(sample)  # noqa: E731
    rounds, iterations = plan_rounds(call, target_s=target_s, min_rounds=min_rounds, max_rounds=max_rounds)
    info.update(timer="time.perf_counter (pytest-benchmark)", rotation_sets=1)
    benchmark.pedantic(call, rounds=rounds, iterations=iterations, warmup_rounds=warmup_rounds)
    return benchmark.stats.stats.median  # pytest-benchmark's stats are per call (iterations divided out)


def op_points(config, cpu_points, gpu_default, gpu_full, smoke: slice = slice(-1, None)) -> list:
    """The (shape, dtype name) points of a memory-bound op suite on this run's device: `gpu_full` with --bench-full
    on CUDA, else `gpu_default`; `cpu_points` on the CPU; the `smoke` slice of them in smoke mode."""
    from conftest import smoke_mode

    if config.getoption("--bench-device") == "cuda":
        points = list(gpu_full if config.getoption("--bench-full") else gpu_default)
    else:
        points = list(cpu_points)
    if smoke_mode(config) and not config.getoption("--bench-full"):
        points = points[smoke]
    return points


def time_op(benchmark, config, provider: str, run: Callable, sample, *, device: str, make: Callable, moved: int,
            info: dict) -> None:
    """One case of a memory-bound op suite: run(sample) once (skipping the test when `provider` cannot run it), then
    time it (once in smoke mode) and record its bandwidth in `info`."""
    from conftest import smoke_mode

    try:
        run(sample)
    except (ops.BackendUnavailableError, ModuleNotFoundError) as exc:
        pytest.skip(f"{provider}: {type(exc).__name__}: {exc}")
    if smoke_mode(config):
        benchmark(run, sample)
        return
    median = measure(benchmark, run, sample, device=device, make=make, set_bytes=moved, min_rounds=3,
                     warmup_rounds=1)
    info["bandwidth_GBps"] = moved / median / 1e9
