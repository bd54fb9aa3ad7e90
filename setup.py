"""Builds fastdiff._C: the C++ CPU kernels always, the CUDA kernels when possible.

CUDA is built when a CUDA toolkit is found AND torch is a CUDA build (a CPU torch
cannot link CUDA code). FASTDIFF_BUILD_CUDA=0|1 overrides. Sources are globbed.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    flag = os.environ.get("FASTDIFF_BUILD_CUDA")
    if flag is not None:
        if flag not in ("0", "1"):
            raise ValueError(f"FASTDIFF_BUILD_CUDA must be 0 or 1, got {flag!r}")
        if flag == "1" and (torch.version.cuda is None or CUDA_HOME is None):
            raise RuntimeError(
                "FASTDIFF_BUILD_CUDA=1 but torch.version.cuda="
                f"{torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r}: need a CUDA torch and a CUDA toolkit"
            )
        return flag == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extension():
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx = ["-O3", "-std=c++20"]  # torch >= 2.10 headers need C++20; the .cu files (no torch headers) stay C++17
    # at::parallel_for is inline: without -fopenmp it compiles to a serial loop (ATen/Parallel-inl.h checks _OPENMP),
    # so every CPU kernel would run on one thread. torch's wheels ship libgomp.so.1, which the loader shares.
    link = []
    if sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if _want_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"  # PTX: newer GPUs JIT it (no sm_100 cubin here)
        sources += rel("csrc/cuda/*.cu") + rel("csrc/cuda/*_torch.cpp")
        # csrc/cuda/nvcc.flags, which `make cuda-check` compiles with too. -DNDEBUG: a failed device assert is sticky
        # (cudaErrorAssert fails every later CUDA call of the process, graph replays included), so release kernels
        # poison bad rows with NaN instead (csrc/cuda/device.cuh). No --use_fast_math: the noise stream's sqrt / log /
        # cos stay correctly rounded / libdevice's, as on the CPU and in the Triton kernels (cuda-check scans the PTX).
        with open(os.path.join(ROOT, "csrc", "cuda", "nvcc.flags")) as f:
            nvcc = f.read().split()
        return CUDAExtension(
            "fastdiff._C", sources, include_dirs=include_dirs,
            define_macros=[("FASTDIFF_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link,
        )
    return CppExtension("fastdiff._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
                        extra_link_args=link)


setup(
    packages=find_packages(include=["fastdiff", "fastdiff.*"]) + ["fastdiff.triton_kernels"],
    package_dir={"fastdiff.triton_kernels": "triton_kernels"},
    # run configs (`fastdiff train --config digits_cfg`) and the digits classifier behind the digits metrics
    package_data={"fastdiff.app": ["configs/*.toml"], "fastdiff.metrics": ["weights/*.pt"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
