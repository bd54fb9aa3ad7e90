import random

import pytest
import torch

import fastdiff.ops as ops
from fastdiff.ops import philox
from tests.ops._cases import N_CASES, RUN_SEED, backend_device


@pytest.mark.parametrize("index", range(N_CASES))
def test_noise_stream_equal_across_backends(backend, index):
    rng = random.Random(RUN_SEED + index)
    shape = rng.choice([(1,), (7,), (3, 1023), (2, 3, 5, 5), (1025,), (4, 17)])
    seed, offset = rng.randrange(2**63), rng.choice([0, 1, 2**32 - 1, 2**32, rng.randrange(2**62)])
    dtype = (torch.float32, torch.float16)[index % 2]
    like = torch.empty(shape, dtype=dtype, device=backend_device(backend))
    out = ops.randn_like(like, seed, offset, backend=backend)
    ref = ops.randn_like(like, seed, offset, backend="reference")
    assert out.dtype == dtype and out.shape == like.shape
    # Equal up to the rounding of log/cos (docs/architecture.md, "One noise stream").
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-6 if dtype == torch.float32 else 2e-3, rtol=1e-5)


@pytest.mark.gpu
def test_cuda_and_triton_noise_bit_identical():
    """On a GPU both kernels draw the stream with the same fp32 math: correctly rounded sqrt (not tl.randn's
    sqrt.approx) and libdevice's log / cos (docs/architecture.md, "One noise stream"; `make triton-check` and
    `make cuda-check` keep approximations out of the PTX), so a seed gives the same noise bit for bit."""
    like = torch.empty(3, 1000, 37, device="cuda")
    for seed, offset in [(0, 0), (2**40 + 7, 2**33 + 11), (2**62, 12345)]:
        cuda = ops.randn_like(like, seed, offset, backend="cuda")
        triton = ops.randn_like(like, seed, offset, backend="triton")
        assert torch.equal(cuda, triton), (cuda - triton).abs().max()


def test_noise_stream_independent_of_batch_size(backend):
    device = backend_device(backend)
    full = ops.randn_like(torch.empty(6, 3, 8, 8, device=device), 1234, 2**32, backend=backend)
    part = ops.randn_like(torch.empty(2, 3, 8, 8, device=device), 1234, 2**32, backend=backend)
    assert torch.equal(full[:2], part)


def test_reference_stream_matches_known_triton_values():
    """Values of tl.randn(seed, offset) recorded from Triton 3.6's interpreter for a few counters."""
    pytest.importorskip("triton")
    import triton
    import triton.language as tl

    from fastdiff.ops.backend import triton_interpret

    if not (torch.cuda.is_available() or triton_interpret()):
        pytest.fail("Triton needs CUDA or TRITON_INTERPRET=1 (set by conftest)")

    @triton.jit
    def _randn(out_ptr, seed, offset, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + i, tl.randn(seed, offset + i.to(tl.int64)), mask=i < n)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for seed, offset in [(0, 0), (2**40 + 7, 2**33 + 11), (2**62, 12345)]:
        out = torch.empty(3000, device=device)
        _randn[(triton.cdiv(3000, 512),)](out, seed, offset, 3000, BLOCK=512)
        ref = philox.randn((3000,), seed, offset, device=device)
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)


def test_noise_statistics():
    z = philox.randn((200_000,), seed=3, offset=0)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    # Neighbouring counters are uncorrelated.
    assert abs(float((z[1:] * z[:-1]).mean())) < 0.01


def test_reference_stream_with_a_seed_tensor_is_bit_identical():
    """A 0-dim / [1] int64 seed tensor gives the int seed's stream bit for bit (the reference of the fused steps'
    seed_tensor), with no host constants: the values below were computed with float32 tensor constants."""
    seed = random.Random(RUN_SEED).randrange(2**63)
    offset = (7 << 32) + 13
    ref = philox.randn((1000,), seed, offset)
    for seed_tensor in (torch.tensor(seed), torch.tensor([seed])):
        assert torch.equal(philox.randn((1000,), seed_tensor, offset), ref)
    assert torch.equal(ref, ops.randn_like(torch.empty(1000), seed=seed, offset=offset, backend="reference"))
    # The Python-scalar constants round exactly as float32 tensor constants would.
    u = torch.rand(1000)
    assert torch.equal(u * 4.6566127342e-10, u * torch.tensor(4.6566127342e-10, dtype=torch.float32))
    assert torch.equal(6.283185307179586 * u, torch.tensor(6.283185307179586, dtype=torch.float32) * u)
