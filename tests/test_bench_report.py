"""benchmarks/report.py on a small synthetic pytest-benchmark JSON: ratios, machine line, charts, README section."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def _row(provider, median, case="adm64_cfg_ddim50", shape="adm64-b4", dtype="bfloat16", suite="loop", cuda=None):
    extra = {"suite": suite, "case": case, "shape": shape, "dtype": dtype, "provider": provider}
    if cuda is not None:
        extra["median_s"] = cuda
    return {"name": f"test[{provider}]", "extra_info": extra, "stats": {"median": median}}


def _data(gpu=True):
    rows = [_row("reference", 2.0, cuda=1.0), _row("compile", 9.0, cuda=0.5), _row("auto", 9.0, cuda=0.8),
            _row("fused+graph", 9.0, cuda=0.4), _row("diffusers", 9.0, cuda=0.9),
            _row("reference", 4e-3, case="ddim", shape="2x4x64x64", dtype="float32", suite="step"),
            _row("cpu", 1e-3, case="ddim", shape="2x4x64x64", dtype="float32", suite="step"),
            _row("triton", 5e-4, case="ddim", shape="2x4x64x64", dtype="float32", suite="step"),
            {"name": "copy", "extra_info": {"suite": "copy", "bytes_moved": 10}, "stats": {"median": 1.0}}]
    info = {"python": "3.12.1", "torch": "2.11.0", "triton": "3.6.0", "date": "2026-11-23",
            "fastdiff_commit": "0123456789abcdef", "compile_backend": "inductor"}
    if gpu:
        info.update(gpu_name="NVIDIA H100 80GB HBM3", gpu_capability="9.0", cuda_runtime="13.0",
                    clocks="clocks.sm\n1980 MHz, 2619 MHz")
    else:
        info.update(cpu_model="AMD EPYC", cpu_count=2, torch_threads=2, cuda_runtime=None)
    return {"benchmarks": rows, "fastdiff": info, "machine_info": {}, "datetime": "2026-11-23T10:00:00"}


def test_speedups_take_the_cuda_median_and_the_fastest_fused_backend():
    rows = report.collect(_data())
    loop = rows["loop"][("adm64_cfg_ddim50", "adm64-b4", "bfloat16")]
    assert loop == {"reference": 1.0, "compile": 0.5, "auto": 0.8, "fused+graph": 0.4, "diffusers": 0.9}
    sp = report.speedups(loop)
    assert sp["compile"] == (2.0, "compile") and sp["fused"] == (1.25, "auto")
    assert sp["fused+graph"] == (2.5, "fused+graph") and sp["diffusers"][0] == pytest.approx(1 / 0.9)
    step = report.speedups(rows["step"][("ddim", "2x4x64x64", "float32")])
    assert step["fused"] == (8.0, "triton") and "compile" not in step
    assert "copy" not in rows
    assert report.speedups({"auto": 1.0}) == {}  # no reference, no ratios


def test_table_rows_and_machine_line():
    text = report.markdown(_data(), "benchmarks/results/x.json")
    assert text.startswith("Machine: NVIDIA H100 80GB HBM3 (compute 9.0), clocks 1980 MHz, 2619 MHz; Python 3.12.1, "
                           "torch 2.11.0, triton 3.6.0, CUDA 13.0; compile backend inductor; fastdiff 0123456789; "
                           "2026-11-23 (`benchmarks/results/x.json`)")
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0] == ("| suite | case | shape | dtype | reference | compile × | fused × | fused+graph × | "
                        "diffusers × | fused vs compile | fused vs diffusers |")
    assert lines[1] == "| step | ddim | 2x4x64x64 | float32 | 4.00 ms | — | 8.00x (triton) | — | — | — | — |"
    assert lines[2] == ("| loop | adm64_cfg_ddim50 | adm64-b4 | bfloat16 | 1.00 s | 2.00x | 1.25x (auto) | 2.50x | "
                        "1.11x | 0.62x | 1.12x |")  # 0.9 s / 0.8 s
    cpu = report.machine(_data(gpu=False))
    assert cpu.startswith("CPU AMD EPYC, 2 cores (2 torch threads); Python 3.12.1") and "CUDA none" in cpu


def test_bad_json_is_a_clear_error():
    with pytest.raises(TypeError, match="'benchmarks' list"):
        report.collect({"rows": []})
    with pytest.raises(ValueError, match=r"extra_info lacks \['shape'\]"):
        report.collect({"benchmarks": [{"name": "b", "extra_info": {"provider": "cpu", "suite": "s", "case": "c",
                                                                     "dtype": "float32"}, "stats": {"median": 1}}]})
    with pytest.raises(ValueError, match="has no median time"):
        report.median_s({"name": "b", "extra_info": {}, "stats": {}})


def test_main_writes_report_charts_and_replaces_the_readme_section(tmp_path, capsys):
    src = tmp_path / "h100-2026-11-23.json"
    src.write_text(json.dumps(_data()))
    readme = tmp_path / "README.md"
    readme.write_text("# fastdiff\n\nintro\n\n## Benchmarks\n\nold table\n\n## Tests\n\nmake test\n")
    assert report.main([str(src), "--readme", str(readme)]) == 0
    out = capsys.readouterr().out
    assert "| loop | adm64_cfg_ddim50 |" in out and out.strip().endswith("|")
    md = (tmp_path / "h100-2026-11-23-report.md").read_text()
    assert md.strip() == out.strip()
    for suite in ("loop", "step"):
        png = tmp_path / f"h100-2026-11-23-{suite}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    text = readme.read_text()
    assert text.count("## Benchmarks") == 1 and "old table" not in text and "## Tests\n\nmake test" in text
    assert "![h100-2026-11-23-loop](h100-2026-11-23-loop.png)" in text and "| step |" not in text
    assert "All suites: `h100-2026-11-23-report.md`" in text
    assert text.index("## Benchmarks") < text.index("| loop |") < text.index("## Tests")
    with pytest.raises(ValueError, match=r"suites \[.nope.\] are not in the results"):
        report.table(_data(), ["nope"])
    # a README without the section gets it appended; running twice keeps one section
    bare = tmp_path / "BARE.md"
    bare.write_text("# x\n")
    for _ in range(2):
        report.main([str(src), "--readme", str(bare), "--no-charts"])
    assert bare.read_text().count("## Benchmarks") == 1 and bare.read_text().startswith("# x\n\n## Benchmarks")


def test_newest_results_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="run benchmarks/run.py first"):
        report.newest(tmp_path)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text("{}")
    b.write_text("{}")
    import os
    os.utime(a, (1e9, 1e9))
    assert report.newest(tmp_path) == b


def test_pipeline_rows_take_the_stock_diffusers_pipeline_as_baseline():
    data = _data()
    data["benchmarks"] += [_row("diffusers", 9.0, case="unet2d_cifar32_ddim50", shape="cifar32-b16", dtype="float32",
                                suite="pipeline", cuda=0.6),
                           _row("auto", 9.0, case="unet2d_cifar32_ddim50", shape="cifar32-b16", dtype="float32",
                                suite="pipeline", cuda=0.5),
                           _row("fused+graph", 9.0, case="unet2d_cifar32_ddim50", shape="cifar32-b16",
                                dtype="float32", suite="pipeline", cuda=0.3)]
    times = report.collect(data)["pipeline"][("unet2d_cifar32_ddim50", "cifar32-b16", "float32")]
    assert report.baseline(times) == "diffusers" and report.baseline({"auto": 1.0}) is None
    sp = report.speedups(times)
    assert sp == {"fused": (pytest.approx(1.2), "auto"), "fused+graph": (2.0, "fused+graph")}  # no diffusers column
    lines = [line for line in report.markdown(data).splitlines() if line.startswith("| ")]
    assert ("| pipeline | unet2d_cifar32_ddim50 | cifar32-b16 | float32 | 600.00 ms (diffusers) | — | 1.20x (auto) | "
            "2.00x | — | — | — |") in lines
    # the loop row keeps reference eager as its baseline, diffusers as a column
    assert report.speedups(report.collect(data)["loop"][("adm64_cfg_ddim50", "adm64-b4", "bfloat16")])["diffusers"]


def test_gpu_idle_table():
    data = _data()
    assert report.idle_table(data) == "" and "GPU idle" not in report.markdown(data)
    data["benchmarks"][3]["extra_info"].update(gpu_idle_frac=0.031, gpu_idle_frac_span=0.012, gpu_busy_s=0.3876,
                                               gpu_wall_s=0.4, gpu_device_ops=2551)
    data["benchmarks"].append(_row("fused+graph", 1.0, shape="adm64-b1", cuda=0.2))
    data["benchmarks"][-1]["extra_info"].update(gpu_idle_frac=0.08, gpu_idle_frac_span=0.05, gpu_busy_s=0.184,
                                                gpu_wall_s=0.2, gpu_device_ops=2551)
    data["benchmarks"].append(_row("fused+graph", 1.0, shape="adm64-b16", cuda=0.2))
    data["benchmarks"][-1]["extra_info"]["gpu_idle_error"] = "torch.profiler recorded no device activity"
    text = report.markdown(data)
    lines = text[text.index("GPU idle time"):].splitlines()
    assert lines[2].startswith("| suite | case | shape | dtype | provider | GPU idle % of wall | ≤ 5% |")
    assert lines[4] == ("| loop | adm64_cfg_ddim50 | adm64-b1 | bfloat16 | fused+graph | 8.0% | NO | 5.0% | "
                        "184.00 ms | 200.00 ms | 2551 |")
    assert lines[5] == ("| loop | adm64_cfg_ddim50 | adm64-b4 | bfloat16 | fused+graph | 3.1% | yes | 1.2% | "
                        "387.60 ms | 400.00 ms | 2551 |")
    assert lines[6].startswith("| loop | adm64_cfg_ddim50 | adm64-b16 | bfloat16 | fused+graph | not measured: "
                               "torch.profiler recorded no device activity |")
    assert report.idle_table(data, ["step"]) == ""


def test_gpu_idle_figures_from_a_profiler_trace():
    """benchmarks/fastdiff_bench.idle_from_trace: device ops grouped by the call's CPU range, overlaps counted once."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import fastdiff_bench as fb
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    def ev(name, cat, ts, dur):
        return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur}

    events = [ev("fastdiff_idle_0", "user_annotation", 0, 1000), ev("fastdiff_idle_1", "user_annotation", 2000, 1000),
              ev("fastdiff_idle_0", "gpu_user_annotation", 100, 700),  # device mirror: ignored
              ev("k1", "kernel", 100, 300), ev("k2", "kernel", 350, 150), ev("copy", "gpu_memcpy", 600, 200),
              ev("k3", "kernel", 2100, 800), ev("cudaGraphLaunch", "cuda_runtime", 2050, 10),
              {"ph": "i", "name": "marker", "ts": 2500}]
    # call 0: busy = [100, 500) + [600, 800) = 600 µs of a 1 ms wall; call 1: 800 µs of 0.9 ms
    out = fb.idle_from_trace(events, [1e-3, 0.9e-3])
    assert out["gpu_device_ops"] == 3 and out["gpu_busy_s"] == pytest.approx(600e-6)  # the median call: idle 40%
    assert out["gpu_idle_frac"] == pytest.approx(0.4) and out["gpu_idle_frac_span"] == pytest.approx(1 - 600 / 700)
    lone = fb.idle_from_trace(events, [0.9e-3, 1e-3][:1])
    assert lone["gpu_idle_frac"] == pytest.approx(1 - 600e-6 / 0.9e-3)
    with pytest.raises(RuntimeError, match="no device activity"):
        fb.idle_from_trace([ev("fastdiff_idle_0", "user_annotation", 0, 10)], [1e-3])
