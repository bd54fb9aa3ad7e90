"""Bad input gives a clear error naming the argument, on every backend (checks run before dispatch)."""
import importlib
import math

import pytest
import torch

import fastdiff.ops as ops
from fastdiff.ops import table as T
from fastdiff.ops.ddim_step import step_rows as ddim_rows
from fastdiff.ops.ddpm_step import step_rows as ddpm_rows
from tests.ops._cases import backend_device


@pytest.fixture
def args():
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 10).double().numpy())
    return torch.randn(2, 3, 4), torch.randn(2, 3, 4), coefs, torch.tensor([3, 9])


@pytest.mark.parametrize("name", ["reference", "cpu"])
def test_step_errors(args, name):
    x, eps, coefs, t = args
    with pytest.raises(TypeError, match="model_output has dtype"):
        ops.ddim_step(x, eps.double(), coefs, t, backend=name)
    with pytest.raises(ValueError, match="model_output must have shape"):
        ops.ddim_step(x, eps[:, :2], coefs, t, backend=name)
    with pytest.raises(IndexError, match=r"t must lie in \[0, 10\)"):
        ops.ddim_step(x, eps, coefs, torch.tensor([3, 10]), backend=name)
    with pytest.raises(IndexError, match="t must lie"):
        ops.ddpm_step(x, eps, coefs, torch.tensor([-1, 0]), backend=name)
    with pytest.raises(ValueError, match="t must have shape"):
        ops.ddim_step(x, eps, coefs, torch.tensor([1, 2, 3]), backend=name)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ops.ddim_step(x, eps, coefs, t, eta=-0.1, backend=name)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ops.ddim_step(x, eps, coefs, t, eta=math.nan, backend=name)
    with pytest.raises(ValueError, match="guidance_scale must be finite"):
        ops.ddim_step(x, eps, coefs, t, model_output_uncond=eps, guidance_scale=math.nan, backend=name)
    with pytest.raises(ValueError, match="either noise"):
        ops.ddpm_step(x, eps, coefs, t, noise=torch.randn_like(x), seed=1, backend=name)
    with pytest.raises(ValueError, match="noise must have x's shape"):
        ops.ddpm_step(x, eps, coefs, t, noise=torch.randn(2, 3, 5), backend=name)
    with pytest.raises(ValueError, match="seed must be an int"):
        ops.ddpm_step(x, eps, coefs, t, seed=-4, backend=name)
    with pytest.raises(ValueError, match="needs model_output with 2C"):
        ops.ddpm_step(x, eps, coefs, t, var_type="learned_range", backend=name)
    with pytest.raises(ValueError, match="var_type must be one of"):
        ops.ddpm_step(x, eps, coefs, t, var_type="large", backend=name)
    with pytest.raises(ValueError, match="prediction must be one of"):
        ops.ddim_step(x, eps, coefs, t, prediction="score", backend=name)
    with pytest.raises(ValueError, match="coefs must be a"):
        ops.q_sample(x, eps, coefs[:, :5], t, backend=name)
    with pytest.raises(TypeError, match="t must be an int"):
        ops.q_sample(x, eps, coefs, t.float(), backend=name)
    with pytest.raises(ValueError, match="x_t must have x_start's shape"):
        ops.posterior_mean_variance(x, eps[:1], coefs, t, backend=name)


@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_bad_seed_tensor_is_named(args, name):
    x, eps, coefs, t = args
    for step in (ops.ddpm_step, lambda *a, **k: ops.ddim_step(*a, eta=1.0, **k)):
        with pytest.raises(TypeError, match=r"seed must be an int or an int64 tensor of shape \[\] or \[1\], got a "
                                            r"torch.int32 tensor"):
            step(x, eps, coefs, t, seed=torch.tensor(3, dtype=torch.int32), backend=name)
        with pytest.raises(TypeError, match="seed must be an int or an int64 tensor.*torch.float32"):
            step(x, eps, coefs, t, seed=torch.tensor(3.0), backend=name)
        with pytest.raises(ValueError, match=r"seed must be an int or an int64 tensor .*got shape \(2,\)"):
            step(x, eps, coefs, t, seed=torch.tensor([3, 4]), backend=name)
        with pytest.raises(ValueError, match=r"got shape \(1, 1\)"):
            step(x, eps, coefs, t, seed=torch.tensor([[3]]), backend=name)
        with pytest.raises(ValueError, match="seed is on meta but x is on cpu"):
            step(x, eps, coefs, t, seed=torch.tensor(3, device="meta"), backend=name)
        with pytest.raises(ValueError, match="either noise"):
            step(x, eps, coefs, t, seed=torch.tensor(3), noise=torch.randn_like(x), backend=name)


def test_cpp_kernel_checks_the_seed_tensor(args):
    """The C++ op's own checks of seed_tensor (int64 [] or [1] on x's device, not with an int seed or noise, and
    on CPU a value in [0, 2**63))."""
    x, eps, coefs, t = args
    table = ddpm_rows(coefs, "epsilon", 0, False, 1.0)  # noise at t > 0

    def step(seed, seed_tensor, noise=None):
        return torch.ops.fastdiff.sampler_step(x, eps, None, table, t, None, 0, noise, seed, 0, False,
                                               seed_tensor)[0]

    bad = r"seed_tensor must be an int64 tensor of shape \[\] or \[1\], got "
    with pytest.raises(RuntimeError, match=bad + "dtype Int"):
        step(-1, torch.tensor(3, dtype=torch.int32))
    with pytest.raises(RuntimeError, match=bad + r"shape \[2\]"):
        step(-1, torch.tensor([3, 4]))
    with pytest.raises(RuntimeError, match="not both"):
        step(3, torch.tensor(3))
    with pytest.raises(RuntimeError, match="either noise"):
        step(-1, torch.tensor(3), torch.randn_like(x))
    with pytest.raises(RuntimeError, match=r"seed must be an int in \[0, 2\*\*63\), got -5 \(the value of seed_tensor"):
        step(-1, torch.tensor(-5))
    assert torch.equal(step(-1, torch.tensor([9])), step(9, None))


def test_device_mismatch_is_named(args):
    x, eps, coefs, t = args
    meta = torch.randn(2, 3, 4, device="meta")
    with pytest.raises(ValueError, match="model_output is on meta but x is on cpu"):
        ops.ddim_step(x, meta, coefs, t)


def test_cpp_kernel_checks_without_python_wrapper(args):
    """The C++ op validates its own inputs too (it can be called directly through torch.ops)."""
    x, eps, coefs, t = args
    with pytest.raises(RuntimeError, match=r"step must lie in \[0, 10\)"):
        torch.ops.fastdiff.sampler_step(x, eps, None, ddim_rows(coefs, 0.0, "epsilon", False, 1.0),
                                        torch.tensor([0, 99]), None, 0, None, -1, 0, False)
    with pytest.raises(RuntimeError, match="noise"):
        torch.ops.fastdiff.q_sample(x, eps[:1], coefs, t)


def test_step_table_validation():
    with pytest.raises(ValueError, match="betas must lie in"):
        ops.step_table([0.1, 1.5])
    with pytest.raises(ValueError, match="timesteps must lie in"):
        ops.betas_for_timesteps([0.9, 0.8], [0, 2])


@pytest.mark.parametrize("op", ["sampler_step", "q_sample", "posterior_mean_variance"])
def test_triton_kernels_poison_out_of_range_timesteps(op):
    """The Triton launchers, called directly (the public op checks t on the host only where that costs no device
    synchronisation), never read the table out of bounds: a row whose t (sampler_step: step) lies outside [0, T)
    comes out NaN, as in the CUDA kernels, writes no history slot, and the other rows are untouched."""
    launchers = importlib.import_module(f"fastdiff.triton_kernels.{op}")
    ref = importlib.import_module(f"fastdiff.ops.{op}").reference
    device = backend_device("triton")
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 10).double().numpy(), device=device)
    x, eps = torch.randn(4, 3, 5, device=device), torch.randn(4, 3, 5, device=device)
    bad = torch.tensor([3, -1, 10, 2**40], device=device)
    table = ddim_rows(coefs, 0.5, "epsilon", True, 1.0)  # DDIM(η = 0.5) rows, writing D into slot 0
    table[:, T.WRITE_D] = 0
    history = torch.randn(1, 4, 3, 5, device=device)
    before = history.clone()
    args = {"sampler_step": (x, eps, None, table, bad, history, 0, eps, -1, 0, False),
            "q_sample": (x, eps, coefs, bad),
            "posterior_mean_variance": (x, eps, coefs, bad)}[op]
    out = getattr(launchers, op)(*args)
    out = out if isinstance(out, torch.Tensor) else out[0]
    assert torch.isnan(out[1:]).all()
    good = [a[:1] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == 4 else a for a in args]
    if op == "sampler_step":
        assert torch.equal(history[:, 1:], before[:, 1:]) and not torch.equal(history[:, :1], before[:, :1])
        good[5] = before[:, :1].clone()
    want = ref(*good)
    want = want if isinstance(want, torch.Tensor) else want[0]
    torch.testing.assert_close(out[:1], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("var_type", [0, 3])
def test_triton_kernels_poison_a_negative_device_seed(var_type):
    """A negative seed in the device seed tensor cannot be checked on the host without a synchronisation: the
    Triton (and CUDA) kernels poison the step with NaN, where the CPU kernel raises (test_bad_seed_tensor_is_named).
    DDPM rows, fixed_small (var_mode 0) and learned_range (var_mode 2)."""
    from fastdiff.triton_kernels.sampler_step import sampler_step
    device = backend_device("triton")
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 10).double().numpy(), device=device)
    table = ddpm_rows(coefs, "epsilon", var_type, True, 1.0)
    var_mode = 2 if var_type == 3 else 0
    x, t = torch.randn(3, 2, 5, device=device), torch.tensor([4, 0, 9], device=device)
    mo = torch.randn(3, 4 if var_mode else 2, 5, device=device)
    for seed, finite in ((5, True), (-3, False)):
        out, _ = sampler_step(x, mo, None, table, t, None, var_mode, None, -1, 0, False,
                              torch.tensor([seed], device=device))
        assert bool(torch.isfinite(out).all()) == finite and (finite or bool(torch.isnan(out).all()))


@pytest.mark.parametrize("op", ["ddim_step", "ddpm_step"])
def test_guidance_scale_without_an_unconditional_output_is_refused(op):
    """A classifier-free scale needs ε_u to combine with; without it the step would silently run unguided."""
    x, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 10).double().numpy())
    step = getattr(ops, op)
    with pytest.raises(ValueError, match="guidance_scale=7.0 needs model_output_uncond"):
        step(x, eps, coefs, 3, guidance_scale=7)
    with pytest.raises(TypeError, match="guidance_scale must be a number"):
        step(x, eps, coefs, 3, model_output_uncond=eps, guidance_scale=True)
    torch.testing.assert_close(step(x, eps, coefs, 3, guidance_scale=1.0, seed=1), step(x, eps, coefs, 3, seed=1))
    guided = step(x, eps, coefs, 3, model_output_uncond=torch.zeros_like(eps), guidance_scale=2.0, seed=1)
    torch.testing.assert_close(guided, step(x, 2 * eps, coefs, 3, seed=1))


def test_boolean_timesteps_are_refused():
    x = torch.randn(2, 3, 4)
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 10).double().numpy())
    with pytest.raises(TypeError, match="t must be an int row index or an int32/int64 tensor, got a bool"):
        ops.q_sample(x, x, coefs, True)
    with pytest.raises(TypeError, match="t must be"):
        ops.ddim_step(x, x, coefs, torch.tensor([True, False]))


def test_triton_attention_refuses_bf16_in_the_interpreter():
    """The interpreter has no bfloat16 dot (it returned values ~1e8 off): asked for by name it refuses; `auto`
    picks a backend that computes it."""
    if not ops.backend.triton_interpret():
        pytest.skip("the refusal is for Triton's interpreter; compiled kernels run bf16")
    qkv = torch.randn(1, 3 * 2 * 16, 16).bfloat16()
    with pytest.raises(ops.BackendUnavailableError, match="no bfloat16 dot"):
        ops.qkv_attention(qkv, 2, backend="triton")
    torch.testing.assert_close(ops.qkv_attention(qkv, 2, backend="auto").float(),
                               ops.qkv_attention(qkv, 2, backend="reference").float(), atol=2e-2, rtol=2e-2)
