#!/usr/bin/env bash
# `make gpu-check`: everything fastdiff must prove on a CUDA machine, in one command that fits a short loan.
#
#   bash scripts/gpu_check.sh [PYTHON]        # full: < 10 min on an H100 from a bare machine
#   GPU_QUICK=1 bash scripts/gpu_check.sh     # subset: < 4 min
#
# Uses the interpreter's preinstalled torch/triton/pytest and downloads nothing. Stages, each with its own time
# limit so one slow stage cannot eat the loan, and the log of each kept under $GPU_CHECK_OUT (default
# build/gpu-check):
#   1. build fastdiff._C with its CUDA kernels for this GPU (fails if the CUDA part did not build);
#   2. every cuda and triton kernel against the reference (tests/ops on CUDA tensors, plus everything marked gpu:
#      graph capture, no host sync in a step, determinism); quick: fp32/fp16 op cases only;
#   3. compute-sanitizer memcheck over the CUDA op tests (full only);
#   4. the GPU benchmarks (benchmarks/run.py --gpu; quick: the step suite only), written to benchmarks/results/,
#      whose short table is printed last.
set -uo pipefail
PYTHON=${1:-${PYTHON:-python3}}
QUICK=${GPU_QUICK:-0}
cd "$(dirname "$0")/.."
OUT=${GPU_CHECK_OUT:-build/gpu-check}
mkdir -p "$OUT"
status=0
start=$(date +%s)

stage() {  # stage NAME SECONDS CMD...: run CMD under a time limit, log it, remember a failure
  local name=$1 limit=$2; shift 2
  echo "== gpu-check: $name (limit ${limit}s)"
  local t0=$(date +%s)
  timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== gpu-check: $name: exit $rc after $(( $(date +%s) - t0 ))s"
  if [ "$rc" -ne 0 ]; then status=1; fi
  return "$rc"
}

nproc_=$(nproc)
# pytest-xdist, where installed, spreads the Triton JIT compiles over the cores (each worker shares the one GPU).
if "$PYTHON" -c "import xdist" 2>/dev/null; then par=(-n "$(( nproc_ < 8 ? nproc_ : 8 ))"); else par=(); fi
pytest=("$PYTHON" -m pytest -q -p no:cacheprovider "${par[@]}")

stage build 300 env FASTDIFF_BUILD_CUDA=1 MAX_JOBS="$nproc_" \
  "$PYTHON" -m pip install -q --no-build-isolation --no-deps -e . || { echo "gpu-check: the build failed"; exit 1; }
stage backends 60 "$PYTHON" -c "import fastdiff.ops as o; s = o.available_backends(); print(s); \
assert s['cuda'].available, s['cuda'].reason; assert s['triton'].available, s['triton'].reason"

if [ "$QUICK" = 1 ]; then
  stage kernels 150 "${pytest[@]}" tests/ops -k "not bfloat16 and not float64" -m "not slow"
  stage benchmarks 90 "$PYTHON" benchmarks/run.py --gpu -k "bench_sampler_step"
else
  stage kernels 240 "${pytest[@]}" tests/ops tests/samplers -m "not slow"
  stage gpu-marked 120 "${pytest[@]}" -m gpu tests --ignore=tests/ops --ignore=tests/samplers
  if command -v compute-sanitizer >/dev/null; then
    stage memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 1 \
      "$PYTHON" -m pytest -q -p no:cacheprovider -x tests/ops -k "cuda" -m gpu
  else
    echo "gpu-check: compute-sanitizer not found; memcheck skipped"; status=1
  fi
  stage benchmarks 200 "$PYTHON" benchmarks/run.py --gpu
fi
echo "gpu-check: $([ $status = 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - start ))s; logs in $OUT/"
exit $status
