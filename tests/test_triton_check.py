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
