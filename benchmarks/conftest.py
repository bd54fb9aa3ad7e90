"""pytest options of fastdiff's benchmark suites.

--bench-device cpu|cuda   where to run (run.py passes cuda with --gpu); default cpu.
--bench-full              every size x dtype (fp32, fp16, bf16); the CPU default runs fp32 + fp16 and the
                          largest size in fp32 only, to keep `make bench` near 10 minutes on 2 cores.
--compile-backend NAME    torch.compile backend of the `compile` provider: inductor (default) or aot_eager;
                          run.py falls back to aot_eager when inductor cannot compile on the machine.
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
    group.addoption("--compile-backend", default="inductor", help="torch.compile backend for `compile`")


def smoke_mode(config) -> bool:
    """True when benchmarks are disabled: each runs once, as pytest-benchmark does with --benchmark-disable."""
    return bool(config.getoption("benchmark_disable")) and not config.getoption("benchmark_enable")
