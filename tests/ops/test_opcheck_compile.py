"""torch.library.opcheck on every registered op, and torch.compile(fullgraph=True) through the public API."""
import pytest
import torch

import fastdiff.ops as ops
from fastdiff.ops import table as T


def _inputs(dtype=torch.float32, n=3):
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 20).double().numpy())
    x = torch.randn(n, 2, 5, 3, dtype=dtype)
    return x, torch.randn(n, 4, 5, 3, dtype=dtype), coefs, torch.tensor([0, 7, 19][:n])


def _sampler_table():
    """A [3, STEP_NCOL] sampler step table: random coefficients, clipping on / off, each row writing D and x
    into different history slots (row 2 writes none)."""
    table = torch.randn(3, T.STEP_NCOL, dtype=torch.float64)
    table[:, T.CLIP] = torch.tensor([1.0, -1.0, 0.5])
    table[:, T.WRITE_D] = torch.tensor([0.0, 1.0, -1.0])
    table[:, T.WRITE_X] = torch.tensor([1.0, 0.0, -1.0])
    table[:, T.LOGVAR_HI], table[:, T.LOGVAR_LO] = -2.0, -3.0
    return table.float()


def _history(x, k_slots=2):
    return torch.randn((k_slots,) + tuple(x.shape), dtype=x.dtype)


SAMPLES = {
    "sampler_step": lambda x, mo, c, t: (x, mo, mo.clone(), _sampler_table(), torch.tensor([0, 1, 2]),
                                         _history(x), 2, None, 11, 2**32, True),
    "sampler_step[noise]": lambda x, mo, c, t: (x, mo, None, _sampler_table(), torch.tensor([2, 0, 1]),
                                                _history(x, 3), 1, torch.randn_like(x), -1, 0, False),
    "sampler_step[seed_tensor]": lambda x, mo, c, t: (
        x, mo[:, :2], None, _sampler_table().double(), torch.tensor([1, 1, 0], dtype=torch.int32), None, 0, None,
        -1, 7, True, torch.tensor([2**62 + 1])),
    "q_sample": lambda x, mo, c, t: (x.requires_grad_(), torch.randn_like(x).requires_grad_(), c, t),
    "posterior_mean_variance": lambda x, mo, c, t: (x.requires_grad_(), torch.randn_like(x).requires_grad_(), c, t),
    "randn_like": lambda x, mo, c, t: (x, 5, 3),
}


@pytest.mark.parametrize("op", sorted(SAMPLES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(op, dtype):
    args = SAMPLES[op](*_inputs(dtype))
    torch.library.opcheck(getattr(torch.ops.fastdiff, op.split("[")[0]).default, args)


def test_compile_fullgraph_sampler_step():
    """The DDIM / DDPM wrappers (sampler_step rows) chained with q_sample and posterior_mean_variance."""
    x, mo, coefs, t = _inputs()

    def step(x, mo, unc):
        out, x0 = ops.ddim_step(x, mo, coefs, t, eta=1.0, model_output_uncond=unc, guidance_scale=2.0, seed=4,
                                offset=8, return_x0=True)
        xt = ops.q_sample(x0, out, coefs, t)
        mean, var, logvar = ops.posterior_mean_variance(x0, xt, coefs, t)
        return ops.ddpm_step(mean, mo, coefs, t, var_type="learned_range", seed=5) + logvar

    unc = torch.randn_like(mo)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, mo, unc), step(x, mo, unc))


def test_compile_fullgraph_sampler_step_op():
    """ops.sampler_step (guidance, learned_range variance, a device seed, return_denoised) traces into one
    graph, and the compiled steps write the caller's history in place as eager does, the second step reading
    the first's writes."""
    x, mo, _, _ = _inputs()
    table, step = _sampler_table(), torch.tensor([0, 1, 2])

    def two_steps(x, mo, unc, history, seed):
        x1, d = ops.sampler_step(x, mo, table, step, history=history, var_mode="learned_range",
                                 model_output_uncond=unc, seed=seed, offset=8, return_denoised=True)
        return ops.sampler_step(x1, mo, table, step.flip(0), history=history, seed=seed, offset=2**32) + d

    unc, history = torch.randn_like(mo), _history(x)
    h_compiled, h_eager = history.clone(), history.clone()
    compiled = torch.compile(two_steps, backend="aot_eager", fullgraph=True)
    got = compiled(x, mo, unc, h_compiled, torch.tensor(4))
    torch.testing.assert_close(got, two_steps(x, mo, unc, h_eager, torch.tensor(4)))
    torch.testing.assert_close(h_compiled, h_eager)
    assert not torch.equal(h_compiled, history)


def test_compile_fullgraph_with_a_seed_tensor():
    """A device seed tensor is an ordinary graph input: a new value changes the noise without recompiling."""
    x, mo, coefs, t = _inputs()
    torch._dynamo.reset()
    calls = []

    def count(gm, example_inputs):
        calls.append(gm)
        return gm

    def step(x, mo, seed):
        return ops.ddpm_step(ops.ddim_step(x, mo, coefs, t, eta=1.0, seed=seed, offset=2**32), mo, coefs, t,
                             var_type="learned_range", seed=seed, offset=2**33)

    compiled = torch.compile(step, backend=count, fullgraph=True)
    for s in (3, 4):
        seed = torch.tensor(s)
        assert torch.equal(compiled(x, mo, seed), step(x, mo, s))
    assert len(calls) == 1


def test_compile_fullgraph_backward():
    x, _, coefs, t = _inputs()
    noise = torch.randn_like(x)

    def loss(x0):
        return ops.q_sample(x0, noise, coefs, t).square().sum()

    x0 = x.clone().requires_grad_()
    torch.compile(loss, backend="aot_eager", fullgraph=True)(x0).backward()
    x1 = x.clone().requires_grad_()
    loss(x1).backward()
    torch.testing.assert_close(x0.grad, x1.grad)
