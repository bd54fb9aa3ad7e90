import importlib
import os
import subprocess
import sys

import pytest
import torch

import fastdiff.ops as ops
from fastdiff.ops import table as T


def _args():
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 10).double().numpy())
    x = torch.randn(2, 3, 4)
    return x, torch.randn(2, 3, 4), coefs, torch.tensor([3, 9])


def test_available_backends_reports_reasons():
    status = ops.available_backends()
    assert set(status) == set(ops.BACKENDS)
    assert status["reference"].available
    assert status["cpu"].available, status["cpu"].reason  # `make test` builds the extension
    for name, s in status.items():
        assert isinstance(s.reason, str) and s.reason, name
    if not torch.cuda.is_available():
        assert not status["cuda"].available and "CUDA" in status["cuda"].reason


def test_use_backend_setter_and_context():
    assert ops.get_backend() == "auto"
    with ops.use_backend("reference"):
        assert ops.get_backend() == "reference"
        with ops.use_backend("cpu"):
            assert ops.get_backend() == "cpu"
        assert ops.get_backend() == "reference"
    assert ops.get_backend() == "auto"
    ops.use_backend("cpu")
    try:
        assert ops.get_backend() == "cpu"
    finally:
        ops.use_backend("auto")


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.use_backend("fast")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where there is no CUDA device")
def test_explicit_unavailable_backend_raises_instead_of_falling_back():
    x, eps, coefs, t = _args()
    with pytest.raises(ops.BackendUnavailableError, match="'cuda' was requested"):
        ops.ddim_step(x, eps, coefs, t, backend="cuda")
    with ops.use_backend("cuda"), pytest.raises(ops.BackendUnavailableError):
        ops.q_sample(x, eps, coefs, t)


def test_auto_picks_the_compiled_cpu_kernel(monkeypatch):
    """`auto` runs the C++ sampler_step on CPU tensors, for the op itself and for the DDIM wrapper's rows."""
    x, eps, coefs, t = _args()
    calls = []
    real = torch.ops.fastdiff.sampler_step

    class Spy:
        def __call__(self, *a):
            calls.append(a)
            return real(*a)

    monkeypatch.setattr(torch.ops.fastdiff, "sampler_step", Spy())
    ops.ddim_step(x, eps, coefs, t)
    assert len(calls) == 1
    table = torch.zeros(2, T.STEP_NCOL)
    table[:, T.WRITE_D] = table[:, T.WRITE_X] = -1
    ops.sampler_step(x, eps, table, 1)
    assert len(calls) == 2


def test_env_var_selects_backend():
    code = "import fastdiff.ops as o; print(o.get_backend())"
    env = dict(os.environ, FASTDIFF_BACKEND="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "reference"
    env["FASTDIFF_BACKEND"] = "bogus"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "backend must be one of" in bad.stderr


def test_import_without_extension_does_not_fail():
    """Importing fastdiff with _C unloadable still works and reports why."""
    code = ("import sys; sys.modules['fastdiff._C'] = None\n"
            "import fastdiff.ops as o; s = o.available_backends(); assert not s['cpu'].available\n"
            "print(s['cpu'].reason)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "did not load" in out.stdout


def test_triton_launchers_run_on_their_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device: every launcher makes its first tensor's device current
    (recorded here through a stand-in torch.cuda.device, as this machine may have no GPU)."""
    launch = importlib.import_module("fastdiff.triton_kernels._launch")
    entered = []

    class Device:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            entered.append("exit")

    class OnCuda1(torch.Tensor):
        @property
        def device(self):
            return torch.device("cuda", 1)

    monkeypatch.setattr(torch.cuda, "device", Device)
    inside = launch.on_tensor_device(lambda scale, x: (scale, list(entered)))
    x = torch.Tensor._make_subclass(OnCuda1, torch.zeros(2))
    assert inside(2.0, x) == (2.0, [torch.device("cuda", 1)]) and entered[-1] == "exit"
    entered.clear()
    assert inside(2.0, torch.zeros(2)) == (2.0, []) and entered == []  # CPU tensors: nothing to switch
    launchers = {op: [op] for op in ("sampler_step", "q_sample", "posterior_mean_variance", "randn_like")}
    launchers.update(adagn=["adagn", "adagn_backward"], qkv_attention=["attention_forward", "attention_backward"])
    launchers.update(attention=["attention_forward", "attention_backward", "flash_forward", "flash_backward"])
    for module, names in launchers.items():
        kernels = importlib.import_module(f"fastdiff.triton_kernels.{module}")
        for name in names:
            assert hasattr(getattr(kernels, name), "__wrapped__"), name  # wrapped by on_tensor_device


def test_triton_elementwise_grid_is_one_dimensional():
    """Rows and column blocks share grid axis 0 (2^31 − 1 programs), so a 2^27-value sample (over 65,535 blocks
    of 1,024) and 100,000 samples both launch; the kernels decompose the program id (tested through every op at
    row lengths BLOCK ± 1)."""
    launch = importlib.import_module("fastdiff.triton_kernels._launch")
    assert launch.Tiling(1, 2**27, torch.float32).grid == (2**17,)
    big_batch = launch.Tiling(100_000, 4096, torch.float16)
    assert big_batch.grid == (100_000 * 4,) and big_batch.rows == 1
    toy = launch.Tiling(100_000, 2, torch.float32)
    assert toy.grid == (triton_cdiv(100_000, toy.rows),) and toy.rows * toy.block_m == 1024


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
