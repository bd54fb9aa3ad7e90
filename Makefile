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
else
# System interpreter (GPU machines without network): use what is installed, download nothing.
INSTALL := $(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .
STAMP := .fastdiff-installed-system
endif

.PHONY: install test demo bench cuda-check gpu-check clean

$(VENV_PYTHON):
	python3.11 -m venv .venv || python3 -m venv .venv
	$(VENV_PYTHON) -m pip install -q --upgrade pip

# Build deps first (no build isolation, so the extension builds against the installed torch).
# torch is pinned and never reinstalled when present: a plain `torch` would pull GBs of CUDA wheels.
$(STAMP): $(SOURCES) | $(if $(filter $(VENV_PYTHON),$(PYTHON)),$(VENV_PYTHON))
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==$(TORCH_VERSION)
	$(PYTHON) -c "import setuptools, wheel, ninja" 2>/dev/null || $(PYTHON) -m pip install -q setuptools wheel ninja
	$(INSTALL)
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

demo: install
	$(PYTHON) -m fastdiff.cli demo --out demo_out

bench: install
	$(PYTHON) benchmarks/run.py
	$(PYTHON) benchmarks/report.py

# Compile every CUDA source for sm_80 and sm_90: no GPU needed. The .cu files include no torch headers.
cuda-check:
	@set -e; for f in csrc/cuda/*.cu; do \
	  echo "nvcc $$f"; \
	  $(NVCC) -std=c++17 -O3 -Icsrc/include $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
	    -c $$f -o /tmp/fastdiff-cuda-check-$$(basename $$f .cu).o; \
	done; echo "cuda-check: all CUDA sources compile for sm_$(subst $() ,/sm_,$(CUDA_ARCHS))"

# On a CUDA machine (../shared/GPU.md): build with CUDA, run the GPU tests and the whole suite, then the benchmarks.
gpu-check:
	FASTDIFF_BUILD_CUDA=1 $(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .
	$(PYTHON) -c "import fastdiff.ops as o; s = o.available_backends(); assert s['cuda'].available, s['cuda'].reason; print(s)"
	$(PYTHON) -m pytest -q -p no:cacheprovider -m gpu tests
	$(PYTHON) -m pytest -q -p no:cacheprovider tests
	$(PYTHON) benchmarks/run.py --gpu
	$(PYTHON) benchmarks/report.py

clean:
	rm -rf build *.egg-info fastdiff/_C*.so .venv/.fastdiff-installed .fastdiff-installed-system demo_out
