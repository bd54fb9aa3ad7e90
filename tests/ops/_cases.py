"""Random cases for every fused op: random inputs from the base seed (tests/_seed.py), odd/prime sizes, size 1, block ±1, fp32/fp16,
non-contiguous layouts. A case is fully determined by its index and the run's base seed."""
from __future__ import annotations

import random

import numpy as np
import torch

import fastdiff.ops as ops

# Random inputs from the suite's base seed (fixed unless FASTDIFF_TEST_SEED=random); the seed is printed in
# failure messages so a failure can be replayed.
from tests._seed import RUN_SEED  # noqa: E402
N_CASES = 200
TRITON_BLOCK = 1024  # triton_kernels' element block: shapes at BLOCK ± 1 exercise the masks

_SPATIAL = [(), (1,), (7,), (5, 3), (11, 13), (4, 4), (17, 19)]
_BLOCK_EDGE = [(TRITON_BLOCK - 1,), (TRITON_BLOCK,), (TRITON_BLOCK + 1,)]


def backend_device(backend: str) -> str:
    return "cuda" if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()) else "cpu"


def schedule(rng: random.Random, T: int) -> np.ndarray:
    if rng.random() < 0.5:
        return np.linspace(1e-4 * 1000 / T, min(0.02 * 1000 / T, 0.999), T)
    s = 0.008
    f = lambda u: np.cos((u / T + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    return np.minimum([1 - f(i + 1) / f(i) for i in range(T)], 0.999)


def rand(shape, dtype, device, gen, noncontig: bool) -> torch.Tensor:
    """Standard normals; non-contiguous when asked (a strided slice of a larger tensor)."""
    if noncontig:
        out = torch.randn(tuple(shape) + (2,), generator=gen).to(device=device, dtype=dtype)[..., 0]
        assert out.numel() <= 1 or not out.is_contiguous()
        return out
    return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)


def tolerances(dtype: torch.dtype) -> dict:
    return {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
            torch.bfloat16: dict(atol=2e-2, rtol=2e-2), torch.float64: dict(atol=1e-10, rtol=1e-10)}[dtype]


def assert_close(actual, expected, dtype, what: str, case: dict):
    if actual.numel() == 0 and expected.numel() == 0:
        assert actual.shape == expected.shape
        return
    tol = tolerances(dtype)
    # Scale the absolute tolerance by the output's magnitude: x̂0 = x/√ᾱ reaches ~1e2 at large t.
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, atol=tol["atol"] * scale, rtol=tol["rtol"],
                               msg=lambda m: f"{what} differs (run seed {RUN_SEED}, case {case}):\n{m}")


def step_case(index: int, device: str, dtypes=(torch.float32, torch.float16)) -> dict:
    """Arguments of a random ddim_step / ddpm_step call (public API keywords)."""
    rng = random.Random(RUN_SEED * 1000 + index)
    gen = torch.Generator().manual_seed(RUN_SEED * 1000 + index)
    n = rng.choice([1, 2, 3, 5, 7])
    c = rng.choice([1, 2, 3, 5])
    spatial = rng.choice(_SPATIAL + ([_BLOCK_EDGE[index % 3]] if index % 7 == 0 else []))
    if index % 7 == 0:
        c = 1
    dtype = dtypes[index % len(dtypes)]
    T = rng.choice([2, 10, 50, 1000])
    betas = schedule(rng, T)
    coefs = ops.step_table(betas, device=device)
    t = torch.randint(0, T, (n,), generator=gen)
    if rng.random() < 0.3:
        t[0] = 0
    noncontig = rng.random() < 0.25
    x = rand((n, c) + spatial, dtype, device, gen, noncontig)
    mo_c = c * rng.choice([1, 2])
    args = dict(x=x, model_output=rand((n, mo_c) + spatial, dtype, device, gen, noncontig and rng.random() < 0.5),
                coefs=coefs, t=t.to(device), prediction=rng.choice(["epsilon", "x0", "v"]),
                clip_denoised=rng.random() < 0.5, return_x0=rng.random() < 0.7)
    if rng.random() < 0.5:
        args["model_output_uncond"] = rand((n, rng.choice([c, mo_c])) + spatial, dtype, device, gen, False)
        args["guidance_scale"] = rng.uniform(0.0, 8.0)
    noise_mode = rng.choice(["tensor", "seed", "generator"])
    if noise_mode == "tensor":
        args["noise"] = rand(x.shape, dtype, device, gen, noncontig)
    elif noise_mode == "seed":
        args["seed"] = rng.randrange(2**63)
        args["offset"] = rng.choice([0, 5, 2**32, 2**40 + 3])
    else:
        args["_generator_seed"] = rng.randrange(2**31)
    args["_meta"] = dict(index=index, shape=tuple(x.shape), mo_channels=mo_c, dtype=str(dtype), T=T,
                         noncontig=noncontig, noise=noise_mode)
    args["_rng"] = rng
    return args


def call(fn, case: dict, **extra):
    """Call a public op with a case's arguments (a fresh generator per call, so both sides draw alike)."""
    kwargs = {k: v for k, v in case.items() if not k.startswith("_")}
    if "_generator_seed" in case:
        kwargs["generator"] = torch.Generator().manual_seed(case["_generator_seed"])
    kwargs.update(extra)
    return fn(**kwargs)


def affine_case(index, device):
    rng = random.Random(RUN_SEED * 7 + index)
    gen = torch.Generator().manual_seed(RUN_SEED * 7 + index)
    n = rng.choice([1, 2, 3, 5])
    shape = (n,) + rng.choice([(), (1,), (3,), (2, 7), (3, 5, 5), (1, 1023), (1, 1025)])
    dtype = (torch.float32, torch.float16)[index % 2]
    T = rng.choice([2, 10, 1000])
    coefs = ops.step_table(schedule(rng, T), device=device)
    t = torch.randint(0, T, (n,), generator=gen).to(device)
    noncontig = rng.random() < 0.3
    a, b = (rand(shape, dtype, device, gen, noncontig) for _ in range(2))
    return dict(a=a, b=b, coefs=coefs, t=t, meta=dict(index=index, shape=shape, dtype=str(dtype), T=T))


def grad_inputs(device, n=3):
    coefs = ops.step_table(torch.linspace(1e-4, 0.02, 50).double().numpy(), device=device, dtype=torch.float64)
    t = torch.randint(0, 50, (n,)).to(device)
    a = torch.randn(n, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(n, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    return a, b, coefs, t


def check_vs_oracle(actual, ref, oracle, floor: float, what: str, meta) -> None:
    """A backend's result is as close to the fp64 oracle as twice the reference's own error, plus floor·max(1,
    |oracle|) (the rounding of the storage dtype); shape and dtype are the reference's."""
    assert actual.shape == oracle.shape and actual.dtype == ref.dtype, (what, actual.shape, actual.dtype, meta)
    if oracle.numel() == 0:
        return
    mag = max(1.0, float(oracle.abs().max()))
    ref_err = float((ref.double() - oracle).abs().max())
    err = float((actual.double() - oracle).abs().max())
    assert err <= 2 * ref_err + floor * mag, (
        f"{what}: error {err:.3g} vs the fp64 oracle exceeds 2x the reference's {ref_err:.3g} (+floor); {meta}")
