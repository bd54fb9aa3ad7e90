"""scripts/triton_check.py (`make triton-check`, run by CI): its grid reaches every Triton kernel in every dtype
and for every target, and it fails on exactly what it promises to fail on. The compiles themselves run in CI."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "triton_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("triton_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def plan() -> list[tuple[str, str, str]]:
    """(kernel, arch, specialisation) for every variant, listed by the script with the interpreter off."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--list"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return [tuple(line.split("\t")) for line in out.stdout.splitlines() if line.count("\t") == 2]


def _jit_kernels() -> set[str]:
    names = set()
    for path in (ROOT / "triton_kernels").glob("*.py"):
        names |= set(re.findall(r"@triton\.jit[^\n]*\ndef (_\w+_kernel)\(", path.read_text()))
    return names


def test_every_kernel_in_every_dtype_for_every_target(plan):
    tc = _load()
    kernels = _jit_kernels()
    assert len(kernels) >= 12
    for kernel in kernels:
        specs = [spec for name, arch, spec in plan if name == kernel]
        archs = ("sm_80", "sm_90") if kernel in tc.ELEMENTWISE else ("sm_80", "sm_86", "sm_89", "sm_90")
        for arch in archs:
            assert any(a == arch for name, a, _ in plan if name == kernel), (kernel, arch)
        dtypes = ("fp32", "fp64") if kernel in tc.ACCUMULATION_ONLY else ("fp32", "fp16", "bf16", "fp64")
        for dtype in dtypes:
            assert any(re.search(rf"(^|/){dtype}\b", spec) for spec in specs), (kernel, dtype)
    # every value of the step kernel's constexprs
    step = [spec for name, _, spec in plan if name == "_sampler_step_kernel"]
    for flag in (["HAS_UNCOND=True", "HAS_UNCOND=False", "NOISE=0", "NOISE=1", "NOISE=2", "SEED_FROM_PTR=True",
                  "SEED_FROM_PTR=False", "STORE_D=True", "STORE_D=False"] + [f"VAR_MODE={v}" for v in range(3)]
                 + [f"HISTORY={k}" for k in range(4)]):
        assert any(re.search(rf"(^| ){flag}( |$)", spec) for spec in step), flag


def test_compiled_attention_tiles_not_the_interpreters(plan):
    """The plan sees the GPU launch configuration: T a runtime argument and tensor-core tiles for fp16."""
    fwd = [spec for name, _, spec in plan if name == "_fwd_kernel"]
    assert any("fp16" in spec and "BLOCK_M=128" in spec for spec in fwd)
    assert not any(re.search(r"\bT=\d", spec) for spec in fwd)


def test_failure_rules():
    tc = _load()
    ok = tc.Variant("_sampler_step_kernel", "fp32", 80, "case", registers=40, spill_bytes=0)
    assert tc.problems(ok) == []
    spill = tc.Variant("_sampler_step_kernel", "fp32", 80, "case", registers=255, spill_bytes=8)
    assert "spills" in tc.problems(spill)[0]
    attention_spill = tc.Variant("_fwd_kernel", "fp16", 80, "case", registers=255, spill_bytes=8)
    assert tc.problems(attention_spill) == []
    broken = tc.Variant("_fwd_kernel", "fp16", 90, "case", ok=False, error="CompilationError: x")
    assert "compile error" in tc.problems(broken)[0]
    over = tc.Variant("_fwd_kernel", "fp16", 86, "case", registers=128, spill_bytes=0, shared=101_377)
    assert "over sm_86's 101376 per block" in tc.problems(over)[0]
    assert tc.problems(tc.Variant("_fwd_kernel", "fp16", 90, "case", registers=128, spill_bytes=0,
                                  shared=200_000)) == []
    big_spill = tc.Variant("_bwd_dq_kernel", "fp32", 80, "case", spill_bytes=tc.ATTENTION_SPILL_BYTES + 1)
    assert "allowed in attention" in tc.problems(big_spill)[0]
    assert "over sm_86" in tc.table([over])


_APPROX_PROBE = '''
import sys, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
sys.path.insert(0, "scripts")  # run from the repository root
import triton_check as tc
from fastdiff.triton_kernels import _sampler_math as sm

@triton.jit
def fast(out_ptr, x_ptr):
    c = tl.arange(0, 16)
    x = tl.load(x_ptr + c)
    tl.store(out_ptr + c, tl.sqrt(x) + tl.exp(x) + tl.randn(7, c.to(tl.int64)) + x / (x + 1.0))

@triton.jit
def exact(out_ptr, x_ptr):
    c = tl.arange(0, 16)
    x = tl.load(x_ptr + c)
    tl.store(out_ptr + c, sm.exp_precise(x) + sm.philox_normal(7, 0, c.to(tl.int64)) + tl.div_rn(x, x + 1.0))

for fn in (fast, exact):
    k = triton.compile(ASTSource(fn, {"out_ptr": "*fp32", "x_ptr": "*fp32"}, {}), target=GPUTarget("cuda", 90, 32))
    print(fn.__name__, sorted(set(tc.APPROXIMATIONS.findall(k.asm["ptx"]))))
'''


def test_sampling_path_approximation_rule_on_real_ptx(tmp_path):
    """The rule's patterns against what Triton really emits: tl.sqrt, tl.exp, `/` and tl.randn compile to PTX
    approximations it flags; the sampling path's own helpers (exp_precise, philox_normal) and div_rn to none."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    probe = tmp_path / "approx_probe.py"  # @triton.jit needs its source in a file
    probe.write_text(_APPROX_PROBE)
    out = subprocess.run([sys.executable, str(probe)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert found["exact"] == "[]"
    for pattern in ("sqrt.approx", "ex2.approx.f32", "div.full"):
        assert pattern in found["fast"], found
    tc = _load()
    flagged = tc.Variant("_sampler_step_kernel", "fp32", 90, "case", registers=40, spill_bytes=0,
                         approx="sqrt.approx")
    assert "approximate math on the sampling path" in tc.problems(flagged)[0]
