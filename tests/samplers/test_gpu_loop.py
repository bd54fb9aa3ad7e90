"""On a CUDA device: no host sync inside a step, and a 50-step DDIM loop captured as one CUDA graph replays
bit-identically to the eager fused loop (GPU.md). Skipped without a GPU."""
import numpy as np
import pytest
import torch

import fastdiff.ops as ops
from fastdiff.samplers._loop import prepare_timesteps, step_offset

AC = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
GPU_BACKENDS = ["cuda", "triton"]


def _model(x, t):
    # Graph-capturable stand-in for a network: elementwise in x and t.
    return torch.tanh(x) * (t.float() / 1000).view(-1, 1, 1, 1) + 0.1 * x


def _loop(x, table, rows, model_t, backend, seed=123):
    steps = rows.shape[0]
    for i in range(steps):
        k = steps - 1 - i
        out = _model(x, model_t[k])
        x = ops.ddim_step(x, out, table, rows[k], eta=1.0, model_output_uncond=0.5 * out, guidance_scale=2.5,
                          seed=seed, offset=step_offset(i), backend=backend)
    return x


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_step_has_no_host_sync(backend):
    x = torch.randn(4, 3, 32, 32, device="cuda")
    table, rows, model_t = prepare_timesteps(range(0, 1000, 20), AC, x)
    _loop(x, table, rows, model_t, backend)  # warm-up (Triton compiles here)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for k in (0, 25, 49):
            ops.ddim_step(x, x, table, rows[k], eta=1.0, seed=1, offset=5, backend=backend)
            ops.ddpm_step(x, torch.cat([x, x], 1), table, rows[k], var_type="learned_range", seed=1, backend=backend)
            ops.q_sample(x, x, table, rows[k], backend=backend)
            ops.posterior_mean_variance(x, x, table, rows[k], backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_ddim50_cuda_graph_replays_bit_identically(backend):
    x_T = ops.randn_like(torch.empty(4, 3, 32, 32, device="cuda"), seed=5)
    table, rows, model_t = prepare_timesteps(range(0, 1000, 20), AC, x_T)
    eager = _loop(x_T, table, rows, model_t, backend)
    static_x = x_T.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _loop(static_x, table, rows, model_t, backend)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = _loop(static_x, table, rows, model_t, backend)
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out, eager)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_step_deterministic_and_matches_reference(backend, dtype):
    x = torch.randn(3, 5, 17, 19, device="cuda", dtype=dtype)
    mo = torch.randn(3, 10, 17, 19, device="cuda", dtype=dtype)
    table = ops.step_table(np.linspace(1e-4, 0.02, 1000), device="cuda")
    t = torch.tensor([0, 500, 999], device="cuda")
    kw = dict(var_type="learned_range", seed=3, offset=2**33, model_output_uncond=mo.flip(0), guidance_scale=4.0)
    a = ops.ddpm_step(x, mo, table, t, backend=backend, **kw)
    b = ops.ddpm_step(x, mo, table, t, backend=backend, **kw)
    assert torch.equal(a, b)
    ref = ops.ddpm_step(x, mo, table, t, backend="reference", **kw)
    tol = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(a, ref, atol=tol * max(1.0, float(ref.abs().max())), rtol=tol)
