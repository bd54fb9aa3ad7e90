"""fastdiff.ops.sampler_step (docs/architecture.md, "Adding a sampler"): every fused backend against the reference on random tables, history
layouts, guidance, raw-output terms (c_o·o, c_ou·o_u), variance modes and noise sources; history slots read only
where their coefficient is nonzero; the in-place history write after every read; the C++ op's own argument
checks."""
from __future__ import annotations

import pathlib
import random
import re

import pytest
import torch

import fastdiff.ops as ops
from fastdiff.ops import table as T
from fastdiff.ops.sampler_step import reference
from tests._seed import RUN_SEED
from tests.ops._cases import TRITON_BLOCK, assert_close, backend_device, rand

N_SAMPLER_CASES = 100
_SPATIAL = [(), (1,), (7,), (5, 3), (11, 13), (4, 4)]
_BLOCK_EDGE = [(TRITON_BLOCK - 1,), (TRITON_BLOCK,), (TRITON_BLOCK + 1,)]
_NOISE_MODES = ("tensor", "seed", "seed_tensor", "none")


def _coef(rng: random.Random, zero_p: float = 0.3, scale: float = 1.0) -> float:
    return 0.0 if rng.random() < zero_p else rng.uniform(-scale, scale)


def random_table(rng: random.Random, rows: int, k_slots: int, device, dtype=torch.float32) -> torch.Tensor:
    """[rows, STEP_NCOL]: random coefficients with zeros, CLIP off (<= 0) or on, WRITE_D / WRITE_X in -1..K-1
    (now and then K, a slot the step must ignore), per-row zero or nonzero history and raw-output (C_O, C_OU)
    coefficients."""
    tab = torch.zeros(rows, T.STEP_NCOL, dtype=torch.float64)
    for r in range(rows):
        tab[r, T.CFG_SCALE] = rng.uniform(0.0, 8.0)
        tab[r, T.A_X], tab[r, T.A_O] = _coef(rng, 0.2, 2.0), _coef(rng, 0.1, 2.0)
        tab[r, T.CLIP] = rng.choice([-1.0, 0.0, rng.uniform(0.1, 2.0), 1.0])
        tab[r, T.C_X], tab[r, T.C_D], tab[r, T.C_Z] = _coef(rng), _coef(rng), _coef(rng, 0.4)
        for k in range(T.MAX_HISTORY):
            tab[r, T.C_H + k] = _coef(rng, 0.4)
        for col in (T.WRITE_D, T.WRITE_X):
            tab[r, col] = rng.choice(list(range(-1, k_slots)) + ([k_slots] if rng.random() < 0.1 else []))
        tab[r, T.LOGVAR_HI] = rng.uniform(-6.0, 0.0)
        tab[r, T.LOGVAR_LO] = tab[r, T.LOGVAR_HI] - rng.uniform(0.0, 2.0)
        tab[r, T.C_O], tab[r, T.C_OU] = _coef(rng, 0.5), _coef(rng, 0.5)
    return tab.to(device=device, dtype=dtype)


def sampler_case(index: int, device) -> dict:
    """Keyword arguments of one random ops.sampler_step call (history left out: see `run`), and its _meta."""
    rng = random.Random(RUN_SEED * 1000 + 7919 + index)
    gen = torch.Generator().manual_seed(RUN_SEED * 1000 + 7919 + index)
    n, c = rng.choice([1, 2, 3, 5]), rng.choice([1, 2, 3])
    spatial = rng.choice(_SPATIAL)
    if index % 7 == 0:  # block edges of the Triton kernel (and of the CPU chunks' vector tails)
        n, c, spatial = rng.choice([1, 2]), 1, _BLOCK_EDGE[(index // 7) % 3]
    dtype = (torch.float32, torch.float16)[index % 2]
    k_slots = rng.choice([0, 1, 2, 3])
    rows = rng.choice([1, 3, 7])
    var_mode = rng.choice([0, 0, 1, 2])
    mo_c = 2 * c if var_mode else c * rng.choice([1, 2])
    noncontig = rng.random() < 0.25
    x = rand((n, c) + spatial, dtype, device, gen, noncontig)
    # learned log-variances around the table's range, so σ_var stays moderate
    mo = rand((n, mo_c) + spatial, dtype, device, gen, noncontig and rng.random() < 0.5)
    step = torch.randint(0, rows, (n,), generator=gen)
    args = dict(x=x, model_output=mo, table=random_table(rng, rows, k_slots, device),
                step=(step if rng.random() < 0.8 else step.int()).to(device), var_mode=var_mode,
                return_denoised=rng.random() < 0.6)
    if rng.random() < 0.5:
        args["model_output_uncond"] = rand((n, rng.choice([c, mo_c])) + spatial, dtype, device, gen, False)
    noise_mode = rng.choice(_NOISE_MODES)
    if noise_mode == "tensor":
        args["noise"] = rand(x.shape, dtype, device, gen, noncontig)
    elif noise_mode in ("seed", "seed_tensor"):
        seed = rng.randrange(2**63)
        args["seed"] = seed if noise_mode == "seed" else torch.tensor(seed, device=device)
        args["offset"] = rng.choice([0, 5, 2**32, 2**40 + 3])
    history = torch.randn((k_slots,) + tuple(x.shape), generator=gen).to(device, dtype) if k_slots else None
    args["_history"] = history
    args["_meta"] = dict(index=index, shape=tuple(x.shape), mo_channels=mo_c, dtype=str(dtype), K=k_slots,
                         rows=rows, var_mode=var_mode, noncontig=noncontig, noise=noise_mode,
                         uncond="model_output_uncond" in args)
    return args


def run(case: dict, backend: str):
    """(x_next, D, history after the step) of `case` on `backend`, on a fresh copy of its history."""
    kwargs = {k: v for k, v in case.items() if not k.startswith("_")}
    history = None if case["_history"] is None else case["_history"].clone()
    out = ops.sampler_step(**kwargs, history=history, backend=backend)
    x_next, d = out if case["return_denoised"] else (out, None)
    return x_next, d, history


@pytest.mark.parametrize("index", range(N_SAMPLER_CASES))
def test_sampler_step_matches_reference(backend, index):
    case = sampler_case(index, backend_device(backend))
    x_next, d, history = run(case, backend)
    want_x, want_d, want_h = run(case, "reference")
    x, meta = case["x"], case["_meta"]
    assert x_next.dtype == x.dtype and x_next.shape == x.shape and x_next.is_contiguous()
    assert torch.isfinite(want_x.float()).all(), "the case itself must be finite to compare anything"
    assert_close(x_next, want_x, x.dtype, "x_next", meta)
    if case["return_denoised"]:
        assert d.dtype == x.dtype and d.shape == x.shape
        assert_close(d, want_d, x.dtype, "D", meta)
    if history is not None:
        assert_close(history, want_h, x.dtype, "history", meta)


def _fixed_inputs(device, dtype=torch.float32, n=3, c=2, spatial=(5, 7), k_slots=2):
    gen = torch.Generator().manual_seed(RUN_SEED + 11)
    shape = (n, c) + spatial
    x, mo = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(2))
    history = torch.randn((k_slots,) + shape, generator=gen).to(device, dtype)
    table = torch.zeros(2, T.STEP_NCOL, device=device)
    table[:, T.WRITE_D] = table[:, T.WRITE_X] = -1
    return x, mo, history, table


def test_sampler_step_empty(backend):
    device = backend_device(backend)
    table = random_table(random.Random(0), 3, 2, device)
    for shape in ((0, 3, 4, 4), (2, 3, 0)):
        x = torch.empty(shape, device=device)
        history = torch.empty((2,) + shape, device=device)
        step = torch.zeros(shape[0], dtype=torch.int64, device=device)
        out, d = ops.sampler_step(x, x, table, step, history=history, seed=1, return_denoised=True,
                                  backend=backend)
        assert out.shape == x.shape and d.shape == x.shape
        assert ops.sampler_step(x, x, table, step, backend=backend).shape == x.shape


def test_unread_history_slots_and_noise_may_hold_nan(backend):
    """A slot whose coefficient is 0 is never read (a sampler's first steps run with uninitialised slots), nor
    is a noise tensor whose row scale c_z is 0; a slot no WRITE_* names is left as it was."""
    device = backend_device(backend)
    x, mo, _, table = _fixed_inputs(device, k_slots=3)
    history = torch.full((3,) + x.shape, float("nan"), device=device)
    table[:, T.A_X], table[:, T.A_O], table[:, T.C_X], table[:, T.C_D] = 0.5, 2.0, 0.9, 0.1
    table[1, T.C_H + 1] = 0.25  # row 1 reads slot 1 ...
    table[:, T.WRITE_D] = 1     # ... which every row then rewrites
    table[:, T.WRITE_X] = 0
    step = torch.tensor([0, 0, 0], device=device)
    out, d = ops.sampler_step(x, mo, table, step, history=history, noise=torch.full_like(x, float("nan")),
                              return_denoised=True, backend=backend)
    assert torch.isfinite(out).all() and torch.isfinite(d).all()
    torch.testing.assert_close(out, 0.9 * x + 0.1 * d)
    assert torch.equal(history[1], d) and torch.equal(history[0], x) and torch.isnan(history[2]).all()
    # the next step reads slot 1 (now D) in row 1
    step = torch.tensor([0, 1, 0], device=device)
    d_prev = history[1].clone()
    out2 = ops.sampler_step(x, mo, table, step, history=history, backend=backend)
    torch.testing.assert_close(out2[1], 0.9 * x[1] + 0.1 * d[1] + 0.25 * d_prev[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_slot_read_and_rewritten_in_one_step(backend, dtype):
    """x_next reads the slots' old values; D and x are written after every read, D winning a shared slot."""
    device = backend_device(backend)
    x, mo, history, table = _fixed_inputs(device, dtype=dtype, spatial=(8, 16))
    old = history.clone()
    table[0, T.A_X], table[0, T.A_O], table[0, T.CLIP] = 1.0, -0.5, 1.0
    table[0, T.C_X], table[0, T.C_D], table[0, T.C_H], table[0, T.C_H + 1] = 0.5, 0.25, 2.0, -1.0
    table[0, T.WRITE_D], table[0, T.WRITE_X] = 0, 1
    table[1] = table[0]
    table[1, T.WRITE_X] = 0  # row 1: D and x both name slot 0: D wins, slot 1 untouched
    step = torch.tensor([0, 1, 0], device=device)
    out, d = ops.sampler_step(x, mo, table, step, history=history, return_denoised=True, backend=backend)
    xf, of = x.float(), mo.float()
    want_d = (xf - 0.5 * of).clamp(-1, 1)
    want = 0.5 * xf + 0.25 * want_d + 2.0 * old[0].float() - old[1].float()
    tol = dict(atol=2e-3, rtol=2e-3) if dtype == torch.float16 else {}
    torch.testing.assert_close(d.float(), want_d, **tol)
    torch.testing.assert_close(out.float(), want, **tol)
    assert torch.equal(history[0], d)
    assert torch.equal(history[1, [0, 2]], x[[0, 2]]) and torch.equal(history[1, 1], old[1, 1])


@pytest.mark.parametrize("uncond", [False, True])
def test_raw_output_terms(backend, uncond):
    """x_next += c_o·o (o the guided output, unclipped: not D) and c_ou·o_u (only with an unconditional output), each
    only in rows whose coefficient is nonzero, added after c_D·D and before the history and noise terms."""
    device = backend_device(backend)
    x, mo, history, table = _fixed_inputs(device, n=4, k_slots=1)
    mu = 3.0 * torch.randn(mo.shape, generator=torch.Generator().manual_seed(RUN_SEED + 12)).to(device)
    table = torch.zeros(4, T.STEP_NCOL, device=device)
    table[:, T.CFG_SCALE], table[:, T.A_X], table[:, T.A_O], table[:, T.CLIP] = 2.5, 1.0, -0.5, 0.5
    table[:, T.C_X], table[:, T.C_D], table[:, T.C_H], table[:, T.C_Z] = 0.5, 0.75, -0.25, 0.125
    table[:, T.WRITE_D], table[:, T.WRITE_X] = 0, -1
    table[:, T.C_O] = torch.tensor([0.0, 0.3, 0.0, -1.5])
    table[:, T.C_OU] = torch.tensor([0.0, 0.0, 0.7, 2.0])
    step = torch.tensor([0, 1, 2, 3], device=device)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(RUN_SEED + 13)).to(device)
    old = history.clone()
    out, d = ops.sampler_step(x, mo, table, step, history=history, model_output_uncond=mu if uncond else None,
                              noise=noise, return_denoised=True, backend=backend)
    xd, od, ud = x.double(), mo.double(), mu.double()
    o = ud + 2.5 * (od - ud) if uncond else od
    want_d = (xd - 0.5 * o).clamp(-0.5, 0.5)
    col = lambda c: table[:, c].double().view(-1, 1, 1, 1)  # noqa: E731
    want = 0.5 * xd + 0.75 * want_d + col(T.C_O) * o + (col(T.C_OU) * ud if uncond else 0.0)
    want = want - 0.25 * old[0].double() + 0.125 * noise.double()
    torch.testing.assert_close(d.double(), want_d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), want, atol=1e-5 * float(want.abs().max()), rtol=1e-5)
    assert torch.equal(history[0], d)


@pytest.mark.parametrize("var_mode", [0, 2])
def test_seed_tensor_equals_int_seed(backend, var_mode):
    device = backend_device(backend)
    x, _, history, _ = _fixed_inputs(device)
    mo = torch.randn(x.shape[0], 2 * x.shape[1], *x.shape[2:], device=device)
    table = random_table(random.Random(3), 4, 2, device)
    table[:, T.C_Z] = 0.7
    step = torch.tensor([3, 0, 2], device=device)
    seed = 2**61 + 12345

    def call(seed):
        return ops.sampler_step(x, mo, table, step, history=history.clone(), var_mode=var_mode, seed=seed,
                                offset=2**33 + 1, backend=backend)

    want = call(seed)
    for seed_tensor in (torch.tensor(seed, device=device), torch.tensor([seed], device=device)):
        assert torch.equal(call(seed_tensor), want)
    assert (call(seed + 1) - want).abs().max() > 1e-2
    want_ref = reference(x, mo, None, table, step, history.clone(), var_mode, None, seed, 2**33 + 1, False)[0]
    torch.testing.assert_close(want, want_ref)


@pytest.mark.parametrize("seed", [-1, 9])
def test_float64_table_and_storage(backend, seed):
    """fp64 x accumulates in fp64 and an fp64 table is read as is: exact to fp64 rounding without noise; the
    Philox normals themselves are fp32 (tl.randn), computed by each side's own log / cos."""
    if backend == "triton":
        pytest.skip("the Triton kernels take fp16/bf16/fp32")
    device = backend_device(backend)
    x, mo, history, _ = _fixed_inputs(device, dtype=torch.float64)
    table = random_table(random.Random(5), 3, 2, device, dtype=torch.float64)
    step = torch.tensor([2, 0, 1], device=device)
    h_ref = history.clone()
    out, d = ops.sampler_step(x, mo, table, step, history=history, seed=None if seed < 0 else seed,
                              return_denoised=True, backend=backend)
    want, want_d = reference(x, mo, None, table, step, h_ref, 0, None, seed, 0, True)
    tol = dict(atol=1e-12, rtol=1e-12) if seed < 0 else dict(atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out, want, **tol)
    torch.testing.assert_close(d, want_d, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(history, h_ref, atol=1e-12, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------- errors


@pytest.fixture
def err_args():
    x, mo, history, _ = _fixed_inputs("cpu")
    table = random_table(random.Random(1), 4, 2, "cpu")
    return x, mo, table, torch.tensor([0, 3, 1]), history


@pytest.mark.parametrize("name", ["reference", "cpu"])
def test_sampler_step_errors(err_args, name):
    x, mo, table, step, history = err_args
    with pytest.raises(ValueError, match=rf"table must be a \[S, {T.STEP_NCOL}\] sampler step table"):
        ops.sampler_step(x, mo, table[:, :12], step, backend=name)
    with pytest.raises(IndexError, match=r"step must lie in \[0, 4\)"):
        ops.sampler_step(x, mo, table, torch.tensor([0, 4, 1]), backend=name)
    with pytest.raises(ValueError, match=r"history must have shape \[K, \*x.shape\]"):
        ops.sampler_step(x, mo, table, step, history=history[:, :2], backend=name)
    with pytest.raises(ValueError, match=r"1 <= K <= 3"):
        ops.sampler_step(x, mo, table, step, history=torch.zeros((4,) + x.shape), backend=name)
    with pytest.raises(ValueError, match="history must be contiguous"):
        ops.sampler_step(x, mo, table, step, history=history.transpose(-1, -2).contiguous().transpose(-1, -2),
                         backend=name)
    with pytest.raises(TypeError, match="history has dtype torch.float64 but x has torch.float32"):
        ops.sampler_step(x, mo, table, step, history=history.double(), backend=name)
    with pytest.raises(ValueError, match="needs model_output with 2C = 4 channels"):
        ops.sampler_step(x, mo, table, step, var_mode="learned", backend=name)
    with pytest.raises(ValueError, match="var_mode must be one of"):
        ops.sampler_step(x, mo, table, step, var_mode="fixed", backend=name)


def test_cpp_op_checks_its_arguments(err_args):
    """The C++ op validates its own inputs (it can be called directly through torch.ops), naming the
    argument."""
    x, mo, table, step, history = err_args

    def op(x=x, mo=mo, table=table, step=step, history=history, var_mode=0, noise=None, seed=-1,
           seed_tensor=None):
        return torch.ops.fastdiff.sampler_step(x, mo, None, table, step, history, var_mode, noise, seed, 0,
                                               False, seed_tensor)

    with pytest.raises(RuntimeError,
                       match=rf"table must be a \[S, {T.STEP_NCOL}\] sampler step table .*shape \[4, 12\]"):
        op(table=table[:, :12].contiguous())
    with pytest.raises(RuntimeError, match="table must be float32 or float64, got Half"):
        op(table=table.half())
    with pytest.raises(RuntimeError, match=r"step must lie in \[0, 4\) \(the rows of table\), got min -1"):
        op(step=torch.tensor([0, 3, -1]))
    with pytest.raises(RuntimeError, match=r"step must have shape \[N\] = \[3\]"):
        op(step=torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="step must be an int32/int64 tensor"):
        op(step=step.float())
    with pytest.raises(RuntimeError, match=r"history must have shape \[K, \*x.shape\] = \[K, 3, 2, 5, 7\]"):
        op(history=history[:, :2].contiguous())
    with pytest.raises(RuntimeError, match=r"1 <= K <= 3, got \[4, 3, 2, 5, 7\]"):
        op(history=torch.zeros((4,) + x.shape))
    with pytest.raises(RuntimeError, match="history must be contiguous"):
        op(history=history.transpose(-1, -2).contiguous().transpose(-1, -2))
    with pytest.raises(RuntimeError, match="history has dtype Half but x has Float"):
        op(history=history.half())
    with pytest.raises(RuntimeError, match=r"var_mode must be 0 \(table\), 1 \(learned\) or 2 \(learned_"):
        op(var_mode=3)
    with pytest.raises(RuntimeError, match="var_mode=1 needs model_output with 2C = 4 channels"):
        op(var_mode=1)
    with pytest.raises(RuntimeError, match="noise must have x's shape"):
        op(noise=torch.randn(3, 2, 5))
    with pytest.raises(RuntimeError, match=r"seed must be an int in \[0, 2\*\*63\), got -5"):
        op(seed_tensor=torch.tensor(-5))
    op(history=None)  # and the valid call runs


def test_coefs_header_mirrors_the_python_columns():
    """csrc/include/fastdiff/coefs.h's step:: enum is fastdiff.ops.table's column layout, value for value."""
    header = pathlib.Path(__file__).parents[2] / "csrc" / "include" / "fastdiff" / "coefs.h"
    body = re.search(r"namespace step \{(.*?)\}  // namespace step", header.read_text(), re.S).group(1)
    body = re.sub(r"//[^\n]*", "", body)
    names = {}
    for name, expr in re.findall(r"\b([A-Z][A-Z_]*) = ([A-Z_0-9]+(?: \+ [A-Z_0-9]+)*)", body):
        names[name] = eval(expr, {}, dict(names))  # noqa: S307 - the header's own constant expressions
    want = {name: getattr(T, name) for name in ("CFG_SCALE", "A_X", "A_O", "CLIP", "C_X", "C_D", "C_Z", "C_H",
                                                "MAX_HISTORY", "WRITE_D", "WRITE_X", "LOGVAR_HI", "LOGVAR_LO",
                                                "C_O", "C_OU", "STEP_NCOL")}
    assert {k: names[k] for k in want} == want
    assert T.STEP_NCOL == max(v for k, v in want.items() if k not in ("MAX_HISTORY", "STEP_NCOL")) + 1
    modes = {f"VAR_MODE_{k.upper()}": v for k, v in T.VAR_MODES.items()}
    assert {k: names[k] for k in modes} == modes
    # and triton_kernels/_coefs.py, the Triton kernels' copy
    from fastdiff.triton_kernels import _coefs
    assert {k: int(getattr(_coefs, k)) for k in want} == want


@pytest.mark.gpu
def test_cuda_poisons_out_of_range_rows():
    """On CUDA the step range is not checked on the host (a sync): a bad row comes out NaN, writes no history
    slot, and the other rows are untouched; no device assert (it would be sticky)."""
    x, mo, history, _ = (t.cuda() for t in _fixed_inputs("cpu"))
    table = random_table(random.Random(2), 4, 2, "cuda")
    table[:, T.WRITE_D] = 0
    bad = torch.tensor([1, -1, 4], device="cuda")
    before = history.clone()
    out, d = torch.ops.fastdiff.sampler_step(x, mo, None, table, bad, history, 0, None, 3, 0, True)
    assert torch.isnan(out[1:]).all() and torch.isnan(d[1:]).all()
    assert torch.equal(history[:, 1:], before[:, 1:])
    good, _ = torch.ops.fastdiff.sampler_step(x[:1], mo[:1], None, table, bad[:1], before[:, :1].clone(), 0,
                                              None, 3, 0, True)
    torch.cuda.synchronize()
    assert torch.isfinite(out[0]).all() and torch.equal(out[0], good[0])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n, spatial, var_mode", [(70_000, (2,), 0), (9, (105,), 0), (9, (105,), 2), (4, (3, 3), 1),
                                                  (3, (8, 8), 2)])
def test_cuda_flat_packs_short_and_odd_rows(dtype, n, spatial, var_mode):
    """The CUDA step walks the flat tensor in 16-byte packs (docs/architecture.md, "CUDA launch shapes"): 70,000
    two-value rows share blocks (and exceed a 65,535 grid axis), rows whose length the pack does not divide cross
    pack ends (element by element there, with each element's own row), a learned variance on such rows falls back to
    scalar packs; against the reference with guidance, history slots read and written, and in-kernel noise."""
    rng, gen = random.Random(RUN_SEED + 71), torch.Generator().manual_seed(RUN_SEED + 71)
    shape = (n, 1) + spatial
    x = rand(shape, dtype, "cuda", gen, False)
    mo = rand((n, 2 if var_mode else 1) + spatial, dtype, "cuda", gen, False)
    uncond = rand(shape, dtype, "cuda", gen, False)
    table = random_table(rng, 5, 2, "cuda")
    table[:, T.WRITE_D], table[:, T.WRITE_X], table[:, T.C_Z] = 0, 1, 0.5
    step = torch.randint(0, 5, (n,), generator=gen).cuda()
    history = torch.randn((2,) + shape, generator=gen).to("cuda", dtype)
    got_h, want_h = history.clone(), history.clone()
    kwargs = dict(model_output_uncond=uncond, var_mode=var_mode, seed=rng.randrange(2**63), offset=2**32 + 7,
                  return_denoised=True)
    got_x, got_d = ops.sampler_step(x, mo, table, step, history=got_h, backend="cuda", **kwargs)
    want_x, want_d = ops.sampler_step(x, mo, table, step, history=want_h, backend="reference", **kwargs)
    meta = dict(shape=shape, dtype=str(dtype), var_mode=var_mode)
    assert_close(got_x, want_x, dtype, "x_next", meta)
    assert_close(got_d, want_d, dtype, "D", meta)
    assert_close(got_h, want_h, dtype, "history", meta)
