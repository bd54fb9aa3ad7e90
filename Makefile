# fastdiff — the README's commands. `make test` and `make demo` set everything up on a fresh machine;
# on a machine that cannot download, pass PYTHON=python3 to use the system interpreter as it is.
PYTHON ?= .venv/bin/python
VENV_PYTHON := .venv/bin/python
TORCH_VERSION := 2.13.0
NVCC ?= nvcc
CUDA_ARCHS ?= 80 90
STAMP := $(dir $(PYTHON)).fastdiff-installed
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

ifeq ($(PYTHON),$(VENV_PYTHON))
INSTALL := $(PYTHON) -m pip install -q --no-build-isolation -e ".[dev]"
# k-diffusion, the samplers' parity peer (tests/_kdiffusion.py loads its sampling code), without its declared
# dependencies: they include torchvision and wandb (for its training code), which we must not pull.
INSTALL_KDIFFUSION := $(PYTHON) -m pip install -q --no-deps k-diffusion==0.1.1.post1
else
# System interpreter (GPU machines without network): use what is installed, download nothing.
INSTALL := $(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .
STAMP := .fastdiff-installed-system
endif

.PHONY: install test demo bench cuda-check triton-check gpu-check clean

$(VENV_PYTHON):
	python3.11 -m venv .venv || python3 -m venv .venv
	$(VENV_PYTHON) -m pip install -q --upgrade pip

# Build deps first (no build isolation, so the extension builds against the installed torch).
# torch is pinned and never reinstalled when present: a plain `torch` would pull GBs of CUDA wheels.
$(STAMP): $(SOURCES) | $(if $(filter $(VENV_PYTHON),$(PYTHON)),$(VENV_PYTHON))
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==$(TORCH_VERSION)
	$(PYTHON) -c "import setuptools, wheel, ninja" 2>/dev/null || $(PYTHON) -m pip install -q setuptools wheel ninja
	$(INSTALL)
	$(INSTALL_KDIFFUSION)
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

demo: install
	$(PYTHON) -m fastdiff demo --out demo_out

bench: install
	$(PYTHON) benchmarks/run.py
	$(PYTHON) benchmarks/report.py

# The whole CUDA side of the extension, compiled with no GPU:
# - every csrc/cuda/*.cu with nvcc for each arch and the release flags setup.py reads (csrc/cuda/nvcc.flags; the .cu
#   files include no torch headers); no device assert may survive -DNDEBUG, no kernel may spill more than
#   CUDA_SPILL_BYTES (ptxas -v);
# - the sampling-path kernels (step, randn, q_sample, posterior) as PTX with the same flags: no approximate sqrt,
#   division or sin / cos (what --use_fast_math would emit), so their noise is the CPU's and the Triton kernels'
#   math (docs/architecture.md, "One noise stream");
# - the host glue (csrc/cuda/*_torch.cpp, and ops.cpp as the CUDA build sees it) with the host compiler against the
#   installed torch's headers (the CPU wheel ships c10/cuda and ATen/cuda) and the CUDA toolkit's, with the flags
#   setup.py gives them. Nothing is linked (a CPU torch has no CUDA libraries), but every launcher the glue calls
#   must be defined by the .cu objects. The CPU wheel lacks one generated header, c10/cuda/impl/cuda_cmake_macros.h;
#   the shim is what CMake writes for the shared-library builds torch ships (searched after torch's own headers,
#   so a CUDA torch's copy wins).
CUDA_INC ?= $(shell $(NVCC) --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^\#\$$ INCLUDES="\(.*\)" *$$/\1/p' | head -1)
CUDA_CHECK_OUT := build/cuda-check
NVCC_FLAGS := $(shell cat csrc/cuda/nvcc.flags)
# Spill stores + loads a CUDA kernel may have (ptxas -v): a few words reloaded from L1 (adaln_modulate's fp64 row
# kernel on sm_90 spills 4 + 4 bytes); whole values per element or a tile would be a defect.
CUDA_SPILL_BYTES := 16
EXACT_MATH_CU := sampler_step randn_like q_sample posterior_mean_variance
APPROX_PTX := \b(sqrt|rsqrt|rcp|div|sin|cos)\.approx[a-z0-9.]*|\bdiv\.full[a-z0-9.]*

cuda-check: install
	@set -e; mkdir -p $(CUDA_CHECK_OUT); rm -f $(CUDA_CHECK_OUT)/*.o; for f in csrc/cuda/*.cu; do \
	  echo "nvcc $$f"; \
	  $(NVCC) $(NVCC_FLAGS) -Icsrc/include $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
	    -Xptxas -v -c $$f -o $(CUDA_CHECK_OUT)/$$(basename $$f .cu).o 2> $(CUDA_CHECK_OUT)/$$(basename $$f .cu).ptxas.log \
	    || { cat $(CUDA_CHECK_OUT)/$$(basename $$f .cu).ptxas.log; exit 1; }; \
	  if awk '/bytes spill stores/ { if ($$5 + $$9 > $(CUDA_SPILL_BYTES)) { print; bad = 1 } } END { exit !bad }' \
	      $(CUDA_CHECK_OUT)/$$(basename $$f .cu).ptxas.log; then \
	    echo "cuda-check: $$f spills over $(CUDA_SPILL_BYTES) bytes (ptxas -v)"; exit 1; fi; \
	  if strings $(CUDA_CHECK_OUT)/$$(basename $$f .cu).o | grep -q __assertfail; then \
	    echo "cuda-check: $$f keeps a device assert in a release build (sticky cudaErrorAssert)"; exit 1; fi; \
	done
	@set -e; for k in $(EXACT_MATH_CU); do \
	  $(NVCC) $(NVCC_FLAGS) -Icsrc/include -arch=compute_90 -ptx csrc/cuda/$$k.cu -o $(CUDA_CHECK_OUT)/$$k.ptx; \
	  approx=$$(grep -oE '$(APPROX_PTX)' $(CUDA_CHECK_OUT)/$$k.ptx | sort -u | tr '\n' ' '); \
	  if [ -n "$$approx" ]; then echo "cuda-check: csrc/cuda/$$k.cu compiles to approximate math ($$approx)"; exit 1; fi; \
	done; echo "cuda-check: the sampling-path kernels ($(EXACT_MATH_CU)) use no approximate sqrt / division / sin / cos"
	@set -e; test -n "$(CUDA_INC)" || { echo "cuda-check: could not find the CUDA toolkit's headers through $(NVCC)"; exit 1; }; \
	inc=$$($(PYTHON) -c "from torch.utils.cpp_extension import include_paths; import sysconfig; print(' '.join('-I' + p for p in include_paths() + [sysconfig.get_paths()['include']]))"); \
	abi=$$($(PYTHON) -c "import torch; print(int(torch.compiled_with_cxx11_abi()))"); \
	shim=$(CUDA_CHECK_OUT)/shim/c10/cuda/impl; mkdir -p $$shim; \
	printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > $$shim/cuda_cmake_macros.h; \
	for f in csrc/cuda/*_torch.cpp csrc/ops.cpp; do \
	  echo "c++ $$f"; \
	  $(CXX) -std=c++20 -O3 -fPIC -fopenmp -DFASTDIFF_WITH_CUDA=1 -DTORCH_EXTENSION_NAME=_C -D_GLIBCXX_USE_CXX11_ABI=$$abi \
	    -Icsrc/include $$inc -I$(CUDA_CHECK_OUT)/shim $(CUDA_INC) -c $$f -o $(CUDA_CHECK_OUT)/$$(basename $$f .cpp).host.o; \
	done
	@set -e; cd $(CUDA_CHECK_OUT); \
	nm -u --format=just-symbols *.host.o | grep fastdiff | sort -u > wanted.txt; \
	nm --defined-only --format=just-symbols $$(ls *.o | grep -v '\.host\.o$$') | sort -u > defined.txt; \
	missing=$$(comm -23 wanted.txt defined.txt); \
	if [ -n "$$missing" ]; then echo "cuda-check: the host glue calls launchers no .cu defines:"; echo "$$missing" | c++filt; exit 1; fi; \
	echo "cuda-check: the $$(wc -l < wanted.txt) launchers the host glue calls are all defined by the .cu objects"
	@echo "cuda-check: every CUDA source compiles for sm_$(subst $() ,/sm_,$(CUDA_ARCHS)), and the host glue against torch's CUDA headers"

# Every Triton kernel compiled ahead of time, with no GPU, for sm_80 and sm_90 (attention also for sm_86/sm_89) in
# every specialisation the launchers choose (scripts/triton_check.py): one table of registers, spills, shared
# memory and wgmma use; fails on compile errors, shared memory over a target's limit and spills.
triton-check: install
	mkdir -p $(CUDA_CHECK_OUT) && env -u TRITON_INTERPRET $(PYTHON) scripts/triton_check.py --json $(CUDA_CHECK_OUT)/triton-check.json

# On a CUDA machine, in under 10 minutes from a bare one (GPU_QUICK=1: under 4): build with CUDA, every cuda and
# triton kernel against the reference, compute-sanitizer, the GPU benchmarks (scripts/gpu_check.sh).
gpu-check:
	bash scripts/gpu_check.sh $(PYTHON)

clean:
	rm -rf build *.egg-info fastdiff/_C*.so .venv/.fastdiff-installed .fastdiff-installed-system demo_out
