"""The CUDA kernels' shared index and statistics math (csrc/include/fastdiff/flat_packs.h, groupnorm.h), checked on
the host: tests/csrc/test_kernel_math.cpp built with the C++ compiler that builds fastdiff._C, then run."""
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_kernel_index_and_statistics_math(tmp_path):
    cxx = os.environ.get("CXX", "c++")
    assert shutil.which(cxx), f"no C++ compiler {cxx!r} (building fastdiff._C needs one too)"
    exe = tmp_path / "test_kernel_math"
    build = subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'csrc' / 'include'}",
                            str(ROOT / "tests" / "csrc" / "test_kernel_math.cpp"), "-o", str(exe)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout[-3000:] + run.stderr[-3000:]
