"""fastdiff.models.nn: adagn, qkv_attention and timestep_embedding against independent formulations."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastdiff.models.nn import adagn, normalization, qkv_attention, timestep_embedding


def _norm(c):
    n = normalization(c)
    with torch.no_grad():
        n.weight.uniform_(0.5, 1.5)
        n.bias.uniform_(-0.5, 0.5)
    return n


def _manual_gn(h, norm):
    """GroupNorm written out: per (sample, group) mean and biased variance over C/G channels and space."""
    n, c = h.shape[:2]
    g = h.reshape(n, norm.num_groups, -1).double()
    y = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + norm.eps)
    shape = (1, c) + (1,) * (h.dim() - 2)
    return y.reshape(h.shape) * norm.weight.double().reshape(shape) + norm.bias.double().reshape(shape)


@pytest.mark.parametrize("shape", [(2, 64, 5, 7), (1, 32, 1, 1), (3, 96, 11), (2, 2048)])
def test_adagn_matches_written_out_formula(shape):
    h = torch.randn(shape) * 3 + 1
    norm = _norm(shape[1])
    scale, shift = torch.randn(shape[0], shape[1]), torch.randn(shape[0], shape[1])
    bc = (shape[0], shape[1]) + (1,) * (len(shape) - 2)
    ref = _manual_gn(h, norm) * (1 + scale.double().reshape(bc)) + shift.double().reshape(bc)
    # One value per group: x - mean is fp32 rounding (~1 ulp of x) divided by sqrt(eps) = 3e-3.
    atol = 1e-3 if h[0].numel() == norm.num_groups else 1e-5
    torch.testing.assert_close(adagn(h, norm, scale, shift).double(), F.silu(ref), rtol=1e-5, atol=atol)
    torch.testing.assert_close(adagn(h, norm, silu=False).double(), _manual_gn(h, norm), rtol=1e-5, atol=atol)
    # [N, C, 1, 1] scale/shift broadcast the same as [N, C].
    torch.testing.assert_close(adagn(h, norm, scale.reshape(bc), shift.reshape(bc)),
                               adagn(h, norm, scale, shift))


def test_adagn_fp16_statistics_in_fp32():
    # Large mean, small spread: fp16 statistics would lose the spread entirely.
    h = (1000 + torch.randn(2, 64, 8, 8)).half()
    norm = _norm(64)
    out = adagn(h, norm)
    assert out.dtype == torch.float16
    ref = F.silu(_manual_gn(h.float(), norm).float().half())  # fp32 statistics, rounded like GroupNorm32
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3)


def test_groupnorm32_module_equals_adagn_without_act():
    h = torch.randn(2, 64, 4, 4)
    norm = _norm(64)
    torch.testing.assert_close(norm(h), F.group_norm(h, 32, norm.weight, norm.bias, norm.eps))


def test_adagn_errors():
    norm = _norm(64)
    with pytest.raises(ValueError, match="expected \\[N, 64"):
        adagn(torch.randn(2, 32, 4, 4), norm)
    with pytest.raises(ValueError, match="scale"):
        adagn(torch.randn(2, 64, 4, 4), norm, torch.randn(2, 32))
    with pytest.raises(ValueError, match="num_channels=48 is not divisible by num_groups=32"):
        normalization(48)


def _split(qkv, heads, legacy):
    """q, k, v: [N, H, T, C] from the packed layout, indexed channel by channel."""
    n, width, t = qkv.shape
    c = width // (3 * heads)
    if legacy:  # channel index h*3C + j*C + c
        x = qkv.reshape(n, heads, 3, c, t)
        return [x[:, :, j].transpose(-1, -2) for j in range(3)]
    x = qkv.reshape(n, 3, heads, c, t)  # channel index j*HC + h*C + c
    return [x[:, j].transpose(-1, -2) for j in range(3)]


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("n,heads,ch,t", [(2, 3, 16, 37), (1, 1, 64, 1), (1, 4, 8, 64)])
def test_qkv_attention_matches_sdpa(legacy, n, heads, ch, t):
    qkv = torch.randn(n, 3 * heads * ch, t)
    q, k, v = _split(qkv, heads, legacy)
    ref = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √C) v: [N, H, T, C]
    ref = ref.transpose(-1, -2).reshape(n, heads * ch, t)
    torch.testing.assert_close(qkv_attention(qkv, heads, legacy), ref, rtol=1e-5, atol=1e-5)


def test_qkv_attention_orders_differ_and_fp16():
    qkv = torch.randn(2, 3 * 4 * 16, 20)
    assert not torch.allclose(qkv_attention(qkv, 4, True), qkv_attention(qkv, 4, False), atol=1e-3)
    out16 = qkv_attention(qkv.half(), 4, True)
    assert out16.dtype == torch.float16
    torch.testing.assert_close(out16.float(), qkv_attention(qkv, 4, True), rtol=1e-2, atol=1e-2)


def test_qkv_attention_errors():
    with pytest.raises(ValueError, match="multiple of 3\\*num_heads = 12"):
        qkv_attention(torch.randn(1, 3 * 10, 5), 4, True)
    with pytest.raises(ValueError, match="\\[N, 3\\*H\\*C, T\\]"):
        qkv_attention(torch.randn(3 * 8, 5), 1, False)


def test_timestep_embedding_values():
    t = torch.rand(5) * 1000
    dim = 33
    emb = timestep_embedding(t, dim)
    assert emb.shape == (5, 33) and emb.dtype == torch.float32
    half = 16
    for i in (0, 5, 15):
        f = math.exp(-math.log(10000) * i / half)
        torch.testing.assert_close(emb[:, i], torch.cos(t * f), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(emb[:, half + i], torch.sin(t * f), rtol=1e-5, atol=1e-4)
    assert torch.all(emb[:, -1] == 0)
