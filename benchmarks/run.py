"""Run fastdiff's benchmark suites and write the report (README, Benchmarks).

    python benchmarks/run.py            # CPU (`make bench`)
    python benchmarks/run.py --gpu      # CUDA timings: do_bench medians, rotated inputs, copy bandwidth
    python benchmarks/run.py --full     # every size x dtype (on CPU: ~3x longer)

Writes benchmarks/results/<device-slug>-<YYYY-MM-DD>.json (pytest-benchmark's JSON plus a "fastdiff" section
with the device and versions) and a Markdown table <same>.md, and prints that table last. Every ratio in the
table comes from one run. It reports; it asserts nothing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: import this fastdiff, installed or not
sys.path.insert(0, str(HERE))
from report import SUITE_ORDER, fmt_time, median_s, natural  # noqa: E402  (one formatter for run.py's table and report.py's)
SUITES = ("bench_sampler_step.py", "bench_sampling_loop.py", "bench_pipeline.py", "bench_schedulers.py",
          "bench_solvers.py", "bench_diffusers_pipeline.py",
          "bench_adagn.py", "bench_adaln_modulate.py", "bench_geglu.py", "bench_attention.py", "bench_unet.py",
          "bench_diffusers_models.py")
#: Baselines (reference eager, its torch.compile, torch SDPA for attention, diffusers' own schedulers) and fastdiff's
#: fused providers (one backend, or `auto`: the fastest backend per op, used for whole models).
PROVIDERS = ("diffusers", "reference", "compile", "sdpa", "cpu", "cuda", "triton", "auto", "fused+graph")
BASELINES = ("reference", "compile", "sdpa", "diffusers")
FUSED = ("cpu", "cuda", "triton", "auto", "fused+graph")

PROBE = """
import importlib, torch
from fastdiff import ops
from fastdiff.ops.ddim_step import step_rows
ref = importlib.import_module("fastdiff.ops.sampler_step").reference
rows = step_rows(ops.step_table([1e-4 * (i + 1) for i in range(100)]), 1.0, "epsilon", False, 3.0)
x = torch.randn(1, 1, 4, 4)
t = torch.randint(0, 100, (1,))
torch.compile(ref, backend="inductor", fullgraph=True)(x, x, x, rows, t, None, 0, None, 1, 5, False)
"""


def choose_compile_backend(requested: str, gpu: bool, timeout_s: float) -> tuple[str, str]:
    """The torch.compile backend of the `compile` provider and why: inductor unless it cannot compile here
    (on CPU a probe compiles the headline reference at 1x1x4x4 within `timeout_s`), else aot_eager."""
    if requested != "auto":
        return requested, "requested"
    if gpu:
        return "inductor", "default (GPU)"
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return "aot_eager", f"inductor did not compile the reference step within {timeout_s:.0f} s on this CPU"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        return "aot_eager", f"inductor failed on this machine: {last[:200]}"
    return "inductor", "inductor compiled the probe"


def _read(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(gpu: bool, compile_backend: tuple[str, str]) -> dict:
    """Device, clocks where readable, and the versions of Python, torch, triton and CUDA."""
    import torch
    import fastdiff.ops as ops
    info = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
        "platform": platform.platform(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "fastdiff_commit": _read(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
        "backends": {k: {"available": v.available, "reason": v.reason} for k, v in ops.available_backends().items()},
        "compile_backend": compile_backend[0], "compile_backend_reason": compile_backend[1],
        "device": "cuda" if gpu else "cpu",
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if gpu and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_name=props.name, gpu_capability=f"{props.major}.{props.minor}",
                    gpu_memory_GiB=round(props.total_memory / 2**30, 1), gpu_sm_count=props.multi_processor_count,
                    gpu_l2_bytes=getattr(props, "L2_cache_size", None), nvcc=_read(["nvcc", "--version"]),
                    driver=_read(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
                    clocks=_read(["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,"
                                  "power.limit", "--format=csv"]))
    return info


def slug(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def build_table(data: dict) -> tuple[str, float | None]:
    """One Markdown table per suite: a row per case/shape/dtype with each provider's median, the fused providers'
    speedups vs reference, compile and (attention) SDPA, their % of copy bandwidth (where the row records the
    bytes it must move) or TFLOP/s (where it records its flops). Returns (tables, copy bandwidth in B/s or None)."""
    rows = defaultdict(lambda: defaultdict(dict))  # suite -> (case, shape, dtype) -> provider -> median s
    work = {}  # (suite, case, shape, dtype) -> ("bytes" | "flops", amount)
    copy_bw = None
    for bench in data.get("benchmarks", []):
        ex = bench.get("extra_info", {})
        if ex.get("suite") == "copy":
            copy_bw = ex["bytes_moved"] / median_s(bench)
            continue
        if "provider" not in ex:
            continue
        key = (ex["case"], ex["shape"], ex["dtype"])
        rows[ex["suite"]][key][ex["provider"]] = median_s(bench)
        if ex.get("flops"):
            work[(ex["suite"], *key)] = ("flops", ex["flops"])
        elif ex.get("bytes_moved"):
            work[(ex["suite"], *key)] = ("bytes", ex["bytes_moved"])
    tables = []
    for suite in sorted(rows, key=lambda name: (SUITE_ORDER.get(name, 99), name)):
        suite_rows = rows[suite]
        present = [p for p in PROVIDERS if any(p in r for r in suite_rows.values())]
        fused = [p for p in FUSED if p in present]
        baselines = [b for b in BASELINES if b in present]
        kinds = {work[(suite, *k)][0] for k in suite_rows if (suite, *k) in work}
        head = ["case", "shape", "dtype"] + [f"{p} (median)" for p in present]
        head += [f"{p} vs {b}" for b in baselines for p in fused]
        if "bytes" in kinds and copy_bw:
            head += [f"{p} % copy BW" for p in fused]
        if "flops" in kinds:
            head += [f"{p} TFLOP/s" for p in present]
        lines = [f"### {suite}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key in sorted(suite_rows, key=lambda k: (k[0], natural(k[1]), k[2])):
            r = suite_rows[key]
            kind, amount = work.get((suite, *key), (None, None))
            cells = list(key) + [fmt_time(r.get(p)) for p in present]
            cells += [f"{r[b] / r[p]:.2f}x" if p in r and b in r else "—" for b in baselines for p in fused]
            if "bytes" in kinds and copy_bw:
                cells += [f"{100 * amount / r[p] / copy_bw:.0f}%" if kind == "bytes" and p in r else "—"
                          for p in fused]
            if "flops" in kinds:
                cells += [f"{amount / r[p] / 1e12:.2f}" if kind == "flops" and p in r else "—" for p in present]
            lines.append("| " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables), copy_bw


def report(data: dict, info: dict, gpu: bool) -> str:
    """The Markdown report: device line, how it was timed, the table."""
    table, copy_bw = build_table(data)
    if gpu:
        device = f"{info.get('gpu_name')} (sm_{info.get('gpu_capability', '').replace('.', '')}), clocks: " \
                 f"{(info.get('clocks') or 'unreadable').splitlines()[-1]}"
        timing = ("CUDA: median of triton.testing.do_bench (CUDA events, L2 flushed) after warm-up, inputs rotated "
                  "past 2x L2; '% copy BW' = (bytes each input read once + each output written once) / time, "
                  f"over a 512 MB device copy measured at {copy_bw / 1e9:.0f} GB/s" if copy_bw else
                  "CUDA: median of triton.testing.do_bench after warm-up, inputs rotated past 2x L2")
    else:
        device = f"{info['cpu_model']}, {info['cpu_count']} cores ({info['torch_threads']} torch threads)"
        timing = "CPU: median wall time of pytest-benchmark rounds after one warm-up call"
    versions = (f"Python {info['python']}, torch {info['torch']}, triton {info['triton']}, "
                f"CUDA {info['cuda_runtime']}")
    notes = (f"compile = torch.compile(reference, backend={info['compile_backend']!r}, fullgraph=True) "
             f"({info['compile_backend_reason']}). Speedups: fused provider's median vs reference eager and vs "
             "compile (and SDPA), same run. ddim_cfg_noise = DDIM η=1 + CFG s=3 + in-kernel Philox noise; "
             "ddim = η=0; ddpm_learned_range = Improved-DDPM step, 2C-channel output; dpmpp_2m_cfg = DPM-Solver++ "
             "2M + CFG, history slot read and written; all four are the one fused sampler_step; ddim50_loop = "
             "sample_ddim, 50 steps; solver = 50 steps of a diffusers scheduler (DPMSolverMultistep Karras, UniPC, "
             "EulerAncestral, FlowMatchEuler) vs the same sampler's table on sampler_step; scheduler = 50 steps of diffusers' DDIM/DDPMScheduler (diffusers) vs FastDDIM/DDPMScheduler "
             "(reference/cpu/... = the backend of its fused step), model replaced by a fixed tensor; "
             "pipeline = diffusers' DDIMPipeline with a UNet2DModel, 50 steps: stock (diffusers) vs "
             "FastDDIMScheduler + adapters.patch (auto) and + GraphedSampler (fused+graph); "
             "adagn = GroupNorm(32) + scale/shift + SiLU; qkv_attention = ADM attention, head dim 64 "
             "(reference = guided-diffusion's einsum); unet = ADM UNet (benchmarks/bench_unet.py), auto = fused "
             "backends.")
    return "\n".join([f"# fastdiff benchmarks — {info['date']}", "", f"Device: {device}", "",
                      f"Versions: {versions}; fastdiff {info.get('fastdiff_commit')}", "", f"Timing: {timing}",
                      "", notes, "", table, ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="benchmark on CUDA (make gpu-check)")
    parser.add_argument("--full", action="store_true", help="every size x dtype (default on CPU: fp32 + fp16, "
                                                            "16x3x256x256 in fp32 only)")
    parser.add_argument("--compile-backend", default="auto", choices=("auto", "inductor", "aot_eager"))
    parser.add_argument("--probe-timeout", type=float, default=60.0, help="seconds the CPU inductor probe may take")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    parser.add_argument("-k", default=None, help="pytest -k expression to run a subset")
    args = parser.parse_args(argv)

    import torch
    if args.gpu and not torch.cuda.is_available():
        print("run.py --gpu: no CUDA device is visible; nothing to benchmark", file=sys.stderr)
        return 1
    compile_backend = choose_compile_backend(args.compile_backend, args.gpu, args.probe_timeout)
    print(f"compile provider: backend={compile_backend[0]} ({compile_backend[1]})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.json"
        cmd = [sys.executable, "-m", "pytest", *[str(HERE / s) for s in SUITES], "--benchmark-enable",
               f"--benchmark-json={raw}", "--benchmark-columns=median,iqr,rounds", "--benchmark-sort=name",
               "-p", "no:cacheprovider", "-q", "-rs", "--bench-device", "cuda" if args.gpu else "cpu",
               "--compile-backend", compile_backend[0]]
        if args.full:
            cmd.append("--bench-full")
        if args.k:
            cmd += ["-k", args.k]
        print(" ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT)
        if not raw.exists():
            print(f"pytest exited with {proc.returncode} and wrote no benchmark JSON", file=sys.stderr)
            return proc.returncode or 1
        data = json.loads(raw.read_text())

    info = device_info(args.gpu, compile_backend)
    info["date"] = datetime.date.today().isoformat()
    info["pytest_returncode"] = proc.returncode
    name = slug(info["gpu_name"]) if args.gpu else "cpu-" + slug(info["cpu_model"])
    data["fastdiff"] = info
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"{name}-{info['date']}"
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    text = report(data, info, args.gpu)
    stem.with_suffix(".md").write_text(text)
    print(f"\nwrote {stem}.json and {stem}.md\n")
    print(text)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
