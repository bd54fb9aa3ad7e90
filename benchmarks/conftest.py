"""pytest options of fastdiff's benchmark suites.

--bench-device cpu|cuda   where to run (run.py passes cuda with --gpu); default cpu.
--bench-full              every size x dtype (fp32, fp16, bf16); the CPU default runs fp32 + fp16 and the
                          largest size in fp32 only, to keep `make bench` near 10 minutes on 2 cores.
--compile-backend NAME    torch.compile backend of the `compile` provider: auto (default: inductor on CUDA,
                          aot_eager on CPU, where inductor took over 5 minutes for one Philox graph on 2 cores),
                          inductor or aot_eager; run.py probes inductor on CPU and passes what it chose.
With --benchmark-disable (pyproject's default) each benchmark runs once on the smallest size, as a check.
TRITON_INTERPRET is deliberately not set: the Triton interpreter is never benchmarked.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_addoption(parser):
    group = parser.getgroup("fastdiff-bench")
    group.addoption("--bench-device", default="cpu", choices=("cpu", "cuda"), help="device to benchmark on")
    group.addoption("--bench-full", action="store_true", help="all sizes and dtypes (slow on CPU)")
    group.addoption("--compile-backend", default="auto", help="torch.compile backend for `compile`")


def smoke_mode(config) -> bool:
    """True when benchmarks are disabled: each runs once, as pytest-benchmark does with --benchmark-disable."""
    return bool(config.getoption("benchmark_disable")) and not config.getoption("benchmark_enable")


def compile_backend(config) -> str:
    """The --compile-backend choice with "auto" resolved for the benchmarked device."""
    name = config.getoption("--compile-backend")
    if name == "auto":
        return "inductor" if config.getoption("--bench-device") == "cuda" else "aot_eager"
    return name
