"""Each block's forward equals guided-diffusion's forward written with its nn.Sequential pieces.

guided-diffusion runs `in_layers`, `out_layers[1:]`, `out` etc. as Sequentials (GroupNorm32 then nn.SiLU
modules); fastdiff routes the same math through adagn / qkv_attention. Same weights -> same outputs.
"""
import math

import pytest
import torch

from fastdiff.models import AttentionBlock, AttentionPool2d, ResBlock
from tests.models.conftest import randomize_


@pytest.mark.parametrize("scale_shift", [False, True])
@pytest.mark.parametrize("mode", ["plain", "up", "down", "channels"])
def test_resblock_matches_sequential_form(scale_shift, mode):
    cout = 64 if mode == "channels" else 32
    block = randomize_(ResBlock(32, 128, 0.0, out_channels=cout, use_scale_shift_norm=scale_shift,
                                up=mode == "up", down=mode == "down")).eval()
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 128)
    if block.updown:
        h = block.in_layers[:-1](x)
        h = block.in_layers[-1](block.h_upd(h))
        xs = block.x_upd(x)
    else:
        h, xs = block.in_layers(x), x
    e = block.emb_layers(emb)[..., None, None]
    if scale_shift:
        scale, shift = torch.chunk(e, 2, dim=1)
        h = block.out_layers[1:](block.out_layers[0](h) * (1 + scale) + shift)
    else:
        h = block.out_layers(h + e)
    expected = block.skip_connection(xs) + h
    out = block(x, emb)
    side = {"up": 16, "down": 4}.get(mode, 8)
    assert out.shape == (2, cout, side, side)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_block_matches_einsum_form(new_order):
    block = randomize_(AttentionBlock(64, num_head_channels=16, use_new_attention_order=new_order)).eval()
    x = torch.randn(2, 64, 5, 3)
    flat = x.reshape(2, 64, 15)
    qkv = block.qkv(block.norm(flat))
    heads, ch = 4, 16
    if new_order:
        q, k, v = (t.reshape(2 * heads, ch, 15) for t in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(2 * heads, 3 * ch, 15).split(ch, dim=1)
    w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(ch), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(2, 64, 15)
    expected = (flat + block.proj_out(a)).reshape(2, 64, 5, 3)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_attention_pool_matches_einsum_form():
    pool = randomize_(AttentionPool2d(4, 64, 32, 10))
    x = torch.randn(3, 64, 4, 4)
    flat = x.reshape(3, 64, 16)
    seq = torch.cat([flat.mean(-1, keepdim=True), flat], -1) + pool.positional_embedding[None]
    q, k, v = (t.reshape(3 * 2, 32, 17) for t in pool.qkv_proj(seq).chunk(3, dim=1))
    w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(32), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(3, 64, 17)
    torch.testing.assert_close(pool(x), pool.c_proj(a)[:, :, 0], rtol=1e-5, atol=1e-5)
