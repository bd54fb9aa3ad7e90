"""Reference Philox4x32-10 + Box-Muller normal stream, bit-compatible with Triton's `tl.randn` (the noise stream: README, Backends).

randn(seed, offset)[j] uses counter (lo32(offset+j), hi32(offset+j), 0, 0) and key
(lo32(seed), hi32(seed)); the first two output words become uniforms
u = float32(int32 word, negatives mapped by -x-1) · 4.6566127342e-10 and the normal is
√(−2 log max(u1, 1e-7)) · cos(2π u2). The same steps live in csrc/include/fastdiff/philox.h;
the Triton kernels' philox_normal (triton_kernels/_sampler_math.py) is tl.randn with a correctly rounded sqrt
(docs/architecture.md, "One noise stream"). Here uint32 words are
held in int64 tensors; products are split into 16-bit halves so no int64 multiply overflows.

The seed may be a Python int or a 0-dim int64 tensor (a device seed, as the fused steps' `seed_tensor`): every
constant is a Python scalar, so the stream creates no tensor from host data and a CUDA graph can capture it.
"""
from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
SEED_MAX = 2**63 - 1


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of the 64-bit product a·b, for a uint32 constant and uint32 words b."""
    p_lo = a * (b & 0xFFFF)          # < 2^48
    p_hi = a * (b >> 16)             # < 2^48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _M32
    return hi & _M32, lo


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox-4x32 rounds on counter words c0..c3 (int64 tensors holding uint32) under key (k0, k1)
    (ints, or 0-dim int64 tensors holding uint32)."""
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def _uniform(word: torch.Tensor) -> torch.Tensor:
    """Triton's uint_to_uniform_float for 32-bit words: [0, 1) float32."""
    signed = torch.where(word >= 2**31, word - 2**32, word)
    signed = torch.where(signed < 0, -signed - 1, signed)
    # A Python float scalar multiplies in float32 as a float32 tensor would (a pinned test checks the bits).
    return signed.to(torch.float32) * 4.6566127342e-10


def check_seed_offset(seed: int, offset: int) -> None:
    """Seeds and offsets are 63-bit non-negative integers."""
    if not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    if not isinstance(offset, int) or not 0 <= offset <= SEED_MAX:
        raise ValueError(f"offset must be an int in [0, 2**63), got {offset!r}")


def randn_counters(seed, counters: torch.Tensor) -> torch.Tensor:
    """Standard normals (float32) for int64 counters under `seed` (an int, or a 0-dim int64 tensor on the
    counters' device holding a value in [0, 2**63)): Triton's tl.randn(seed, counters)."""
    c0 = counters & _M32
    c1 = (counters >> 32) & _M32
    zero = torch.zeros_like(c0)
    w0, w1, _, _ = philox4x32_10(c0, c1, zero, zero, seed & _M32, (seed >> 32) & _M32)
    u1 = torch.clamp_min(_uniform(w0), 1.0e-7)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(6.283185307179586 * _uniform(w1))


def randn(shape, seed, offset: int = 0, device=None) -> torch.Tensor:
    """float32 normals of `shape`; element j (row-major) uses counter offset + j. seed: an int, or a 0-dim /
    [1] int64 tensor on `device` whose value is read on the device (no host sync)."""
    if isinstance(seed, torch.Tensor):
        check_seed_offset(0, offset)
        seed = seed.reshape(())
    else:
        check_seed_offset(seed, offset)
    numel = 1
    for s in shape:
        numel *= int(s)
    counters = torch.arange(numel, dtype=torch.int64, device=device) + offset
    return randn_counters(seed, counters).reshape(tuple(shape))
