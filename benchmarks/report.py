"""Turn benchmark results (benchmarks/results/*.json, pytest-benchmark JSON written by run.py) into a Markdown
table of speedups per provider and PNG bar charts, with the machine they came from.

    python benchmarks/report.py                        # the newest results JSON
    python benchmarks/report.py results/X.json --readme README.md   # also replace README's "## Benchmarks"

Per result row (suite, case, shape, dtype) the table gives the reference's median time and every other provider's
speedup over it, measured in the same run: compile (torch.compile of the reference), sdpa (attention),
fused (the fastest of fastdiff's fused backends cpu / cuda / triton / auto, named in the cell), fused+graph
(GraphedSampler) and diffusers (its own scheduler loop with the same model). Rows without a reference eager
provider (the `pipeline` suite: a stock diffusers DDIMPipeline vs fastdiff's scheduler, patch and graph) take
`diffusers` as their baseline instead. Rows that recorded the GPU idle time of a CUDA graph replay
(extra_info `gpu_idle_frac`, bench_sampling_loop's fused+graph) get a second table against the 5% target.
Writes <stem>-report.md and one <stem>-<suite>.png per suite next to the JSON (or in --out-dir) and prints the
Markdown.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FUSED = ("cpu", "cuda", "triton", "auto")
#: Report columns in order: (column, providers it takes the fastest of).
COLUMNS = (("compile", ("compile",)), ("sdpa", ("sdpa",)), ("fused", FUSED), ("fused+graph", ("fused+graph",)),
           ("diffusers", ("diffusers",)))
SUITE_ORDER = {"step": 0, "loop": 1, "pipeline": 2, "scheduler": 3, "adagn": 4, "adaln_modulate": 5, "geglu": 6,
               "attention": 7, "unet": 8, "models": 9}
#: A row's baseline: the first of these it measured (reference eager; else the stock diffusers pipeline).
BASELINES = ("reference", "diffusers")
IDLE_TARGET = 0.05
README_HEADING = "## Benchmarks"


def median_s(bench: dict) -> float:
    """A row's time: the CUDA do_bench/event median when recorded, else pytest-benchmark's median (seconds)."""
    extra = bench.get("extra_info", {})
    value = extra.get("median_s") or bench.get("stats", {}).get("median")
    if value is None:
        raise ValueError(f"benchmark {bench.get('name', '?')!r} has no median time (extra_info.median_s or "
                         f"stats.median)")
    return float(value)


def fmt_time(seconds: float | None) -> str:
    """1.5e-4 -> '150.0 µs', 0.0123 -> '12.30 ms', 2.5 -> '2.50 s', None -> '—'."""
    if seconds is None:
        return "—"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def natural(text: str) -> list:
    """Sort key: '8x3x128x128' after '2x4x64x64', 'adm32-b4' before 'adm64-b1'."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(text))]


def collect(data: dict) -> dict:
    """{suite: {(case, shape, dtype): {provider: median seconds}}} from a pytest-benchmark JSON (rows without a
    provider, e.g. the copy-bandwidth probe, are left out)."""
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise TypeError("results JSON must be pytest-benchmark output: an object with a 'benchmarks' list")
    rows = defaultdict(lambda: defaultdict(dict))
    for bench in data["benchmarks"]:
        extra = bench.get("extra_info", {})
        if "provider" not in extra:
            continue
        missing = [k for k in ("suite", "case", "shape", "dtype") if k not in extra]
        if missing:
            raise ValueError(f"benchmark {bench.get('name', '?')!r}: extra_info lacks {missing}")
        rows[extra["suite"]][(extra["case"], str(extra["shape"]), extra["dtype"])][extra["provider"]] = median_s(bench)
    return rows


def baseline(times: dict) -> str | None:
    """The provider a row's speedups are over: reference eager, else diffusers (stock pipeline rows), else None."""
    return next((p for p in BASELINES if times.get(p)), None)


def speedups(times: dict) -> dict:
    """{column: (speedup over the baseline, provider)} for one row; columns without a measured provider, the
    baseline's own column, and rows without a baseline are absent. times: {provider: median seconds}."""
    base = baseline(times)
    out = {}
    if base is None:
        return out
    ref = times[base]
    for column, providers in COLUMNS:
        if column == base:
            continue
        have = [(times[p], p) for p in providers if times.get(p)]
        if have:
            best, provider = min(have)
            out[column] = (ref / best, provider)
    return out


def machine(data: dict) -> str:
    """One line: device (GPU name and capability, or CPU model and cores), versions, commit and date."""
    info = data.get("fastdiff") or {}
    mi = data.get("machine_info") or {}
    if info.get("gpu_name"):
        device = f"{info['gpu_name']} (compute {info.get('gpu_capability', '?')})"
        clocks = info.get("clocks")
        if clocks:
            device += f", clocks {clocks.splitlines()[-1].strip()}"
    else:
        cpu = info.get("cpu_model") or (mi.get("cpu") or {}).get("brand_raw") or mi.get("processor") or "unknown CPU"
        cores = info.get("cpu_count") or (mi.get("cpu") or {}).get("count")
        threads = info.get("torch_threads")
        device = f"CPU {cpu}" + (f", {cores} cores" if cores else "") + (f" ({threads} torch threads)" if threads
                                                                           else "")
    versions = [f"{name} {info[key]}" for name, key in (("Python", "python"), ("torch", "torch"),
                                                         ("triton", "triton"), ("CUDA", "cuda_runtime"))
                if info.get(key)]
    if not info.get("cuda_runtime"):
        versions.append("CUDA none")
    commit = info.get("fastdiff_commit") or (data.get("commit_info") or {}).get("id")
    date = info.get("date") or str(data.get("datetime", ""))[:10]
    tail = f"; fastdiff {commit[:10]}" if commit else ""
    compile_note = f"; compile backend {info['compile_backend']}" if info.get("compile_backend") else ""
    return f"{device}; {', '.join(versions)}{compile_note}{tail}; {date}".strip("; ")


def table(data: dict, suites=None) -> str:
    """The Markdown table: one row per (suite, case, shape, dtype), speedups over reference eager; suites: the
    suites to show (None: all)."""
    rows = collect(data)
    if suites is not None:
        unknown = sorted(set(suites) - set(rows))
        if unknown:
            raise ValueError(f"suites {unknown} are not in the results (have {sorted(rows)})")
        rows = {k: v for k, v in rows.items() if k in suites}
    present = [c for c, _ in COLUMNS if any(c in speedups(t) for suite in rows.values() for t in suite.values())]
    head = ["suite", "case", "shape", "dtype", "reference"] + [f"{c} ×" for c in present]
    # the fused provider against each other baseline of the same row (the ratio of their speedups)
    versus = [c for c in ("compile", "diffusers") if "fused" in present and c in present]
    head += [f"fused vs {c}" for c in versus]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for suite in sorted(rows, key=lambda s: (SUITE_ORDER.get(s, 99), s)):
        for key in sorted(rows[suite], key=lambda k: (k[0], natural(k[1]), k[2])):
            times = rows[suite][key]
            sp = speedups(times)
            base = baseline(times)
            cells = [suite, *key, "—" if base is None else fmt_time(times[base]) + (
                "" if base == "reference" else f" ({base})")]
            for column in present:
                if column not in sp:
                    cells.append("—")
                    continue
                ratio, provider = sp[column]
                cells.append(f"{ratio:.2f}x" + (f" ({provider})" if column == "fused" else ""))
            for c in versus:
                cells.append(f"{sp['fused'][0] / sp[c][0]:.2f}x" if "fused" in sp and c in sp else "—")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def idle_rows(data: dict, suites=None) -> list[tuple]:
    """[(suite, case, shape, dtype, provider, extra_info)] of rows that recorded GPU idle time (gpu_idle_frac) or
    why it could not be measured (gpu_idle_error)."""
    out = []
    for bench in data.get("benchmarks", []):
        extra = bench.get("extra_info", {})
        if ("gpu_idle_frac" in extra or "gpu_idle_error" in extra) and (suites is None or extra.get("suite") in
                                                                          suites):
            out.append((extra["suite"], extra["case"], str(extra["shape"]), extra["dtype"], extra["provider"], extra))
    return sorted(out, key=lambda r: (SUITE_ORDER.get(r[0], 99), r[1], natural(r[2]), r[3], r[4]))


def idle_table(data: dict, suites=None) -> str:
    """Markdown table of GPU idle time per recorded row: idle % of wall (target <= 5%), idle % of the span from the
    first to the last device op, device busy and wall time, device ops; '' when no row recorded it."""
    rows = idle_rows(data, suites)
    if not rows:
        return ""
    head = ["suite", "case", "shape", "dtype", "provider", "GPU idle % of wall", f"≤ {IDLE_TARGET:.0%}",
            "idle % between ops", "busy", "wall", "device ops"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for suite, case, shape, dtype, provider, ex in rows:
        if "gpu_idle_frac" not in ex:
            lines.append("| " + " | ".join([suite, case, shape, dtype, provider, "not measured: "
                                            + ex["gpu_idle_error"][:80]] + ["—"] * 5) + " |")
            continue
        idle = ex["gpu_idle_frac"]
        lines.append("| " + " | ".join([
            suite, case, shape, dtype, provider, f"{100 * idle:.1f}%", "yes" if idle <= IDLE_TARGET else "NO",
            f"{100 * ex.get('gpu_idle_frac_span', float('nan')):.1f}%", fmt_time(ex["gpu_busy_s"]),
            fmt_time(ex["gpu_wall_s"]), str(ex.get("gpu_device_ops", "—"))]) + " |")
    return "\n".join(lines)


def markdown(data: dict, source: str = "", suites=None) -> str:
    """The report: machine line, how to read the table, the table (of `suites`, None: all), and the GPU idle
    table when rows recorded it."""
    note = ("Speedup = baseline median / provider median, same run (>1: faster); the baseline is reference eager, "
            "or for rows without one (pipeline) the stock diffusers pipeline, named in the cell. fused = the "
            "fastest of fastdiff's fused backends (named); fused+graph = the whole loop as one CUDA graph "
            "(GraphedSampler); diffusers = diffusers' scheduler loop with the same model.")
    src = f" (`{source}`)" if source else ""
    parts = [f"Machine: {machine(data)}{src}", "", note, "", table(data, suites), ""]
    idle = idle_table(data, suites)
    if idle:
        parts += ["GPU idle time of one CUDA graph replay (torch.profiler device ops vs CUDA-event wall time; "
                  f"target ≤ {IDLE_TARGET:.0%} of wall):", "", idle, ""]
    return "\n".join(parts)


def charts(data: dict, stem: Path) -> list[Path]:
    """One PNG per suite: horizontal bars of each provider's speedup over the row's baseline (log scale), per row.
    Returns the written paths (<stem>-<suite>.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for suite, suite_rows in collect(data).items():
        keys = sorted(suite_rows, key=lambda k: (k[0], natural(k[1]), k[2]))
        sp = [speedups(suite_rows[k]) for k in keys]
        columns = [c for c, _ in COLUMNS if any(c in s for s in sp)]
        if not columns:
            continue
        fig, ax = plt.subplots(figsize=(8, 0.3 * len(keys) + 1.2), dpi=110)
        height = 0.8 / len(columns)
        for j, column in enumerate(columns):
            ys = [i + j * height for i in range(len(keys))]
            ax.barh(ys, [s[column][0] if column in s else 0 for s in sp], height=height, label=column)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(keys))])
        ax.set_yticklabels([" | ".join(k) for k in keys], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("speedup over reference eager (log)" if suite != "pipeline" else
                      "speedup over the stock diffusers pipeline (log)")
        ax.set_title(f"{suite} — {machine(data).split(';')[0]}", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = stem.parent / f"{stem.name}-{suite}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def replace_readme_section(readme: Path, body: str) -> None:
    """Replace README's '## Benchmarks' section (up to the next '## ' heading) with body, or append it."""
    text = readme.read_text()
    section = f"{README_HEADING}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(README_HEADING)}\s*$.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    readme.write_text(text)


def newest(results: Path = RESULTS) -> Path:
    """The most recently written results JSON."""
    files = sorted(results.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no results JSON in {results}; run benchmarks/run.py first")
    return files[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="?", type=Path, default=None, help="results JSON (default: the newest)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write (default: next to the JSON)")
    parser.add_argument("--no-charts", action="store_true", help="Markdown only")
    parser.add_argument("--readme", type=Path, default=None, help="replace this README's '## Benchmarks' section")
    parser.add_argument("--readme-suites", default="loop,scheduler,pipeline",
                        help="comma-separated suites the README section shows (default: %(default)s; 'all')")
    args = parser.parse_args(argv)
    path = args.json or newest()
    data = json.loads(path.read_text())
    out_dir = args.out_dir or path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / path.stem
    try:
        shown = path.resolve().relative_to(HERE.parent)
    except ValueError:
        shown = path
    text = markdown(data, str(shown))
    (out_dir / f"{path.stem}-report.md").write_text(text)
    written = [] if args.no_charts else charts(data, stem)
    if args.readme:
        suites = None if args.readme_suites == "all" else [s for s in args.readme_suites.split(",") if s]
        if suites is not None and args.readme_suites == parser.get_default("readme_suites"):
            suites = [s for s in suites if s in collect(data)]  # the default names what a run may lack
        base = args.readme.resolve().parent
        rel = lambda p: p.resolve().relative_to(base) if p.resolve().is_relative_to(base) else p
        body = markdown(data, str(shown), suites)
        body += f"\nAll suites: `{rel(out_dir / (path.stem + '-report.md'))}`."
        body += "".join(f"\n\n![{p.stem}]({rel(p)})" for p in written
                        if suites is None or p.stem.rsplit("-", 1)[-1] in suites)
        replace_readme_section(args.readme, body)
    print(f"wrote {out_dir / (path.stem + '-report.md')}" + "".join(f", {p}" for p in written), file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
